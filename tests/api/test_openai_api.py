"""The /v1 routes through the API alone (real Redis, no worker): OpenAI's error shape for every kind of error, and
a call whose jobs do not end in OPENAI_TIMEOUT_S (504, its jobs canceled)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.settings import Settings
from tests.images import gradient

KEY = {"Authorization": "Bearer k3y"}


@pytest.fixture
def client(redis_server, tmp_path) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_server.url,
        queue_name=f"v1-{uuid.uuid4().hex[:8]}",
        results_dir=tmp_path,
        api_key="k3y",
        openai_timeout_s=0.5,
        max_n=4,
        max_upload_bytes=50_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _error(r, status: int, param: str | None, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["code"] == code, error
    return error


def test_errors_have_openais_shape(client: TestClient) -> None:
    error = _error(client.get("/v1/models"), 401, None, "unauthorized")
    assert error["type"] == "authentication_error"
    assert client.get("/v1/models", headers={"X-API-Key": "k3y"}).status_code == 200
    _error(
        client.post("/v1/images/generations", headers=KEY, json={"prompt": "a", "n": 5}), 400, "n", "invalid-parameter"
    )
    _error(client.post("/v1/images/generations", headers=KEY, json={"n": 1}), 400, "prompt", "invalid-parameter")
    _error(
        client.post("/v1/images/generations", headers=KEY, json={"prompt": "a", "model": "dall-e-3"}),
        400,
        "model",
        "invalid-parameter",
    )
    _error(client.post("/v1/images/generations", headers=KEY, content=b"{"), 400, None, "invalid-parameter")
    _error(client.get("/v1/no-such-thing", headers=KEY), 404, None, "not-found")
    _error(client.get("/v1/images/generations", headers=KEY), 405, None, "method-not-allowed")
    files = {"image": ("a.png", gradient(), "image/png")}
    _error(client.post("/v1/images/edits", headers=KEY, files=files), 400, "prompt", "invalid-parameter")
    _error(
        client.post("/v1/images/edits", headers=KEY, files=files, data={"prompt": "x", "model": "mnist-flow"}),
        400,
        "model",
        "invalid-parameter",
    )
    big = {"image": ("a.png", b"x" * 200_000, "image/png")}
    _error(client.post("/v1/images/variations", headers=KEY, files=big), 413, "image", "upload-too-large")
    huge = {"image": ("a.png", b"x" * 1_200_000, "image/png")}  # refused before the body is parsed (the middleware)
    _error(client.post("/v1/images/variations", headers=KEY, files=huge), 413, "image", "upload-too-large")
    # the rest of the API still answers problem+json
    r = client.post("/mnist/sample", headers=KEY, params={"digit": 11})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_a_call_past_its_time_limit_is_504_and_its_jobs_are_canceled(client: TestClient) -> None:
    r = client.post("/v1/images/generations", headers=KEY, json={"prompt": "7", "model": "mnist-flow", "n": 3})
    error = _error(r, 504, None, "timeout")
    assert error["type"] == "server_error" and "OPENAI_TIMEOUT_S" in error["message"]
    lifecycle = client.app.state.lifecycle
    queued = [j.decode() for j in lifecycle.redis.lrange(lifecycle.queue.key, 0, -1)]
    assert queued == []  # canceled: out of the queue
    # sizes are read from the live workers: without one, a size cannot be checked
    r = client.post("/v1/images/generations", headers=KEY, json={"prompt": "a", "size": "64x64"})
    _error(r, 503, None, "operation-unavailable")


def test_the_schema_states_the_v1_routes() -> None:
    spec = create_app(Settings()).openapi()
    assert {"/v1/models", "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"} <= set(spec["paths"])
    post = spec["paths"]["/v1/images/generations"]["post"]
    assert {"400", "401", "503", "504"} <= set(post["responses"])
    assert post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
