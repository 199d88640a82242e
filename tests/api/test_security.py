"""API keys, request size limits and path traversal."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings
from tests.images import gradient


@pytest.fixture
def locked(redis_server, tmp_path):
    s = Settings(
        redis_url=redis_server.url,
        queue_name=f"sec-{uuid.uuid4().hex[:8]}",
        results_dir=tmp_path,
        api_key="s3cret-key",
        max_upload_bytes=100_000,
    )
    with TestClient(create_app(s)) as c:
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "wrong"},
        {"X-API-Key": "s3cret-ke"},
        {"X-API-Key": ""},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic s3cret-key"},
        {"Authorization": "s3cret-key"},
        {"X-API-Key": "wrong", "Authorization": "Bearer s3cret-key"},  # a wrong X-API-Key is not overruled
    ],
)
def test_protected_routes_need_the_key(locked, headers) -> None:
    for method, path, kwargs in [
        ("post", "/mnist/sample", {"params": {"digit": 3}}),
        ("post", "/mnist/sample", {"params": {"digit": 99}}),  # auth is checked before validation
        ("get", "/jobs/" + "a" * 32, {}),
        ("post", "/jobs/" + "a" * 32 + "/cancel", {}),
        ("post", "/jobs/" + "a" * 32 + "/webhook/redeliver", {}),
        ("post", "/sample", {"data": {"prompt": "a cat"}}),
        ("post", "/sdedit", {"files": {"image": ("a.png", gradient(), "image/png")}}),
    ]:
        r = getattr(locked, method)(path, headers=headers, **kwargs)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "ApiKey"


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": "s3cret-key"}, {"Authorization": "Bearer s3cret-key"}, {"authorization": "bearer s3cret-key"}],
)
def test_right_key_passes_and_health_is_open(locked, headers) -> None:
    r = locked.post("/mnist/sample", params={"digit": 3}, headers=headers)
    assert r.status_code == 202
    assert locked.get(f"/jobs/{r.json()['id']}", headers=headers).status_code == 200
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/readyz").status_code in (200, 503)  # open, no key needed


def test_oversized_body_is_413_before_parsing(locked) -> None:
    big = b"x" * 1_300_000
    r = locked.post("/sdedit", headers={"X-API-Key": "s3cret-key"}, files={"image": ("a.png", big, "image/png")})
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/jobs/%2e%2e/result",
        "/jobs/" + "A" * 32,
        "/jobs/" + "a" * 31 + "/result",
        "/jobs/" + "a" * 32 + "/files/..%2Fmanifest.json",
        "/jobs/" + "a" * 32 + "/files/.env",
    ],
)
def test_no_path_traversal(locked, path) -> None:
    r = locked.get(path, headers={"X-API-Key": "s3cret-key"})
    assert r.status_code == 404, r.text


def test_storage_refuses_bad_ids_and_names(tmp_path) -> None:
    from core.store import FolderStore, InvalidKey

    store = FolderStore(tmp_path)
    job_id = uuid.uuid4().hex
    (tmp_path / "secret").write_text("no")
    for job, name in [("../x", "a.png"), (job_id, "../secret"), (job_id, "/etc/passwd"), (job_id, "a/b/c.png")]:
        with pytest.raises(InvalidKey):
            store.put(job, name, b"x")
        with pytest.raises(InvalidKey):
            store.get(job, name)
    store.put(job_id, "a.png", b"png")
    assert store.get(job_id, "a.png") == b"png" and store.list(job_id) == ["a.png"]
