"""The result store's two backends pass the same tests: a real folder, and a real S3 server (SeaweedFS, started
once per session by the `s3_server` fixture). No mock anywhere."""

from __future__ import annotations

import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.store import (
    CHUNK_SIZE,
    FolderStore,
    InvalidKey,
    ResultStore,
    S3Store,
    StoreNotFound,
    StoreUnavailable,
    open_store,
    read_manifest,
    write_manifest,
)
from tests.support import SeaweedServer


def new_job() -> str:
    return secrets.token_hex(16)


def s3_store(server: SeaweedServer, **overrides: str) -> S3Store:
    """A store on its own prefix of the session's bucket, so that tests (and `sweep`) see only their objects."""
    kwargs = {
        "endpoint_url": server.endpoint,
        "access_key_id": server.ACCESS_KEY,
        "secret_access_key": server.SECRET_KEY,
        "region": server.REGION,
        **overrides,
    }
    bucket = kwargs.pop("bucket", server.bucket)
    return S3Store(bucket, f"t-{uuid.uuid4().hex[:12]}", **kwargs)


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    if request.param == "folder":
        yield FolderStore(tmp_path / "results")
    else:
        yield s3_store(request.getfixturevalue("s3_server"))


def test_put_get_stat_exists(store: ResultStore) -> None:
    job = new_job()
    png = os.urandom(30 * 1024)
    assert store.stat(job, "a.png") is None and not store.exists(job, "a.png")
    with pytest.raises(StoreNotFound):
        store.get(job, "a.png")
    store.put(job, "a.png", png)
    store.put(job, "inputs/image", b"upload", content_type="image/jpeg")
    assert store.get(job, "a.png") == png and store.get(job, "inputs/image") == b"upload"
    info = store.stat(job, "a.png")
    assert info is not None and info.size == len(png) and store.exists(job, "a.png")
    assert info.etag.startswith('"') and info.etag.endswith('"') and len(info.etag) > 2
    assert abs(info.last_modified - time.time()) < 60
    assert info.content_type == "image/png"
    store.put(job, "a.png", b"replaced")  # a put replaces the object whole
    assert store.get(job, "a.png") == b"replaced"
    new = store.stat(job, "a.png")
    assert new is not None and new.size == 8 and new.etag != info.etag
    assert store.stat(job, "inputs") is None and store.stat(new_job(), "a.png") is None


def test_open_streams_ranges(store: ResultStore) -> None:
    job = new_job()
    data = os.urandom(200 * 1024)  # more than one 64 KiB chunk
    store.put(job, "big.png", data)
    etag = store.stat(job, "big.png").etag  # type: ignore[union-attr]
    cases = {
        (None, None): (0, len(data)),
        (10, 20): (10, 20),
        (100, None): (100, len(data)),
        (0, 1): (0, 1),
        (len(data) - 5, len(data) + 500): (len(data) - 5, len(data)),  # an end past the object: to the end
    }
    for (start, end), (lo, hi) in cases.items():
        with store.open(job, "big.png", start, end) as obj:
            chunks = list(obj)
            assert (obj.start, obj.end) == (lo, hi), (start, end)
            assert obj.size == len(data) and obj.etag == etag and obj.content_type == "image/png"
        assert b"".join(chunks) == data[lo:hi], (start, end)
    sizes = [len(chunk) for chunk in store.open(job, "big.png")]
    assert len(sizes) >= 2 and max(sizes) <= CHUNK_SIZE and sum(sizes) == len(data)
    for start, end in [(len(data), None), (len(data) + 10, len(data) + 20), (5, 5)]:  # nothing to read
        with store.open(job, "big.png", start, end) as obj:
            assert obj.read() == b"" and obj.size == len(data) and obj.start == obj.end
    with pytest.raises(StoreNotFound):
        store.open(job, "missing.png")
    with pytest.raises(StoreNotFound):
        store.open(job, "missing.png", 10, 20)


def test_list_and_delete_job(store: ResultStore) -> None:
    job, other = new_job(), new_job()
    names = ["manifest.json", "sample-0.png", "inputs/image", "previews/I-0005.png", "previews/I-0010.png"]
    for name in names:
        store.put(job, name, name.encode())
    store.put(other, "sample-0.png", b"other")
    assert store.list(job) == sorted(names)
    assert store.list(job, "previews/") == ["previews/I-0005.png", "previews/I-0010.png"]
    assert store.list(job, "previews/I-001") == ["previews/I-0010.png"]
    assert store.list(job, "sample") == ["sample-0.png"]
    assert store.list(new_job()) == []
    assert store.delete_job(job) == len(names)
    assert store.list(job) == [] and not store.exists(job, "inputs/image")
    with pytest.raises(StoreNotFound):
        store.get(job, "manifest.json")
    assert store.delete_job(job) == 0
    assert store.get(other, "sample-0.png") == b"other"  # other jobs untouched


def test_sweep_deletes_jobs_whose_newest_object_is_old(store: ResultStore) -> None:
    old, mixed, new = new_job(), new_job(), new_job()
    store.put(old, "a.png", b"a")
    store.put(mixed, "inputs/image", b"m")
    if isinstance(store, FolderStore):  # no waiting: age the files
        past = time.time() - 100
        for path in [store.root / old / "a.png", store.root / mixed / "inputs" / "image"]:
            os.utime(path, (past, past))
    else:  # S3 keeps whole seconds, set by the server
        time.sleep(1.2)
    store.put(mixed, "b.png", b"m")
    store.put(new, "c.png", b"n")
    t_old = store.stat(old, "a.png").last_modified  # type: ignore[union-attr]
    t_new = store.stat(new, "c.png").last_modified  # type: ignore[union-attr]
    assert t_new - t_old >= 1
    assert store.sweep(max_age_s=3600) == 0
    assert store.sweep(max_age_s=(t_new - t_old) / 2, now=t_new) == 1
    assert store.list(old) == []
    assert store.list(mixed) == ["b.png", "inputs/image"] and store.list(new) == ["c.png"]
    assert store.sweep(max_age_s=60, now=time.time() + 3600) == 2
    assert store.list(mixed) == [] and store.list(new) == []


def test_sweep_leaves_what_is_not_a_job(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    (tmp_path / "notajob").mkdir()
    (tmp_path / "notajob" / "x").write_bytes(b"x")
    assert store.sweep(0, now=time.time() + 100) == 0 and (tmp_path / "notajob" / "x").exists()


BAD_JOBS = ["", "../x", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 31 + "/", "../" + "0" * 29]
BAD_NAMES = [
    "",
    "..",
    "../x",
    "/etc/passwd",
    "a/../b",
    "a/b/c",
    ".hidden",
    "a//b",
    "a/",
    "/a",
    "a\\b",
    "a\x00b",
    "x" * 101,
    "previews/..",
]


def test_bad_keys_are_refused_before_any_io(store: ResultStore, tmp_path: Path) -> None:
    job = new_job()
    by_job = [
        lambda j: store.put(j, "a.png", b"x"),
        lambda j: store.get(j, "a.png"),
        lambda j: store.open(j, "a.png"),
        lambda j: store.stat(j, "a.png"),
        lambda j: store.exists(j, "a.png"),
        lambda j: store.list(j),
        lambda j: store.delete_job(j),
        lambda j: store.presigned_url(j, "a.png", 60),
    ]
    by_name = [
        lambda n: store.put(job, n, b"x"),
        lambda n: store.get(job, n),
        lambda n: store.open(job, n),
        lambda n: store.stat(job, n),
        lambda n: store.presigned_url(job, n, 60),
    ]
    for calls, bads in [(by_job, BAD_JOBS), (by_name, BAD_NAMES)]:
        for bad in bads:
            for call in calls:
                with pytest.raises(InvalidKey):
                    call(bad)
    for bad in ["../", "/etc", "a/b/c", "a/../"]:
        with pytest.raises(InvalidKey):
            store.list(job, bad)
    assert issubclass(InvalidKey, ValueError)
    assert store.list(job) == []
    if isinstance(store, FolderStore):
        assert not any(tmp_path.rglob("passwd")) and not (tmp_path / "x").exists()


def test_manifest_is_json_and_missing_is_none(store: ResultStore) -> None:
    job = new_job()
    assert read_manifest(store, job) is None
    manifest = {"files": {"a.png": {"width": 64}}, "main": "a.png"}
    write_manifest(store, job, manifest)
    assert read_manifest(store, job) == manifest
    assert json.loads(store.get(job, "manifest.json")) == manifest
    assert store.stat(job, "manifest.json").content_type == "application/json"  # type: ignore[union-attr]
    store.put(job, "manifest.json", b"{half")
    assert read_manifest(store, job) is None


def test_check_passes(store: ResultStore) -> None:
    store.check()


def test_presigned_url_serves_the_same_bytes(s3_server: SeaweedServer, tmp_path: Path) -> None:
    store = s3_store(s3_server)
    job = new_job()
    data = os.urandom(40 * 1024)
    store.put(job, "a.png", data)
    url = store.presigned_url(job, "a.png", 60)
    assert url is not None and s3_server.SECRET_KEY not in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.content == data == store.get(job, "a.png")
    assert r.headers["etag"] == store.stat(job, "a.png").etag  # type: ignore[union-attr]
    tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
    assert httpx.get(tampered).status_code == 403  # real signatures: a changed URL is refused
    assert httpx.get(url.split("?", 1)[0]).status_code == 403  # and no anonymous reads
    with pytest.raises(ValueError):
        store.presigned_url(job, "a.png", 0)
    assert FolderStore(tmp_path).presigned_url(job, "a.png", 60) is None


def test_wrong_credentials_are_unavailable_without_leaking_them(s3_server: SeaweedServer) -> None:
    secret = "wrong-secret-that-must-not-leak"
    store = s3_store(s3_server, secret_access_key=secret)
    job = new_job()
    for call in (
        lambda: store.put(job, "a.png", b"x"),
        lambda: store.get(job, "a.png"),
        lambda: store.stat(job, "a.png"),
        lambda: store.list(job),
        store.check,
    ):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert secret not in str(info.value) and "credentials" in str(info.value)


def test_a_missing_bucket_fails_the_check(s3_server: SeaweedServer) -> None:
    store = s3_store(s3_server, bucket="no-such-bucket")
    with pytest.raises(StoreUnavailable, match="bucket"):
        store.check()


def test_open_store_follows_the_settings(s3_server: SeaweedServer, tmp_path: Path) -> None:
    folder = open_store(Settings(_env_file=None, results_dir=tmp_path / "r"))
    assert isinstance(folder, FolderStore) and folder.root == tmp_path / "r"
    env = {k.lower(): v for k, v in s3_server.env(prefix=f"t-{uuid.uuid4().hex[:8]}/nested").items()}
    s3 = open_store(Settings(_env_file=None, **env))
    assert isinstance(s3, S3Store) and s3.prefix.endswith("/nested")
    job = new_job()
    s3.put(job, "a.png", b"via settings")
    assert s3.get(job, "a.png") == b"via settings"
    assert s3_server.SECRET_KEY not in repr(s3)
    with pytest.raises(ValueError):
        Settings(_env_file=None, results_url="https://bucket/prefix")


def test_store_down_then_back_with_every_object_intact(s3_server: SeaweedServer) -> None:
    """SIGKILL the server (a crash): every call fails fast with StoreUnavailable; after the restart (same data
    folder) the objects written before are byte-identical, through the same client."""
    store = s3_store(s3_server)
    job = new_job()
    written = {f"sample-{i}.png": os.urandom(20 * 1024 + i) for i in range(3)}
    for name, data in written.items():
        store.put(job, name, data)
    write_manifest(store, job, {"files": {name: {} for name in written}})
    url = store.presigned_url(job, "sample-0.png", 600)
    s3_server.kill()
    try:
        for call in (
            lambda: store.put(job, "late.png", b"x"),
            lambda: store.get(job, "sample-0.png"),
            lambda: store.open(job, "sample-0.png"),
            lambda: store.stat(job, "sample-0.png"),
            lambda: store.list(job),
            lambda: store.delete_job(new_job()),
            lambda: store.sweep(1),
            store.check,
        ):
            began = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                call()
            assert time.monotonic() - began < 5
            assert "unreachable" in str(info.value) and s3_server.SECRET_KEY not in str(info.value)
    finally:
        s3_server.restart()
    store.check()
    assert {name: store.get(job, name) for name in written} == written
    assert read_manifest(store, job) == {"files": {name: {} for name in written}}
    assert httpx.get(url).content == written["sample-0.png"]  # a URL signed before still works
    assert not store.exists(job, "late.png")
