"""app/downloads.py over both result-store backends (a real folder, a real SeaweedFS), in a tiny FastAPI app that
answers a missing object with 404 as the routers do."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from app.downloads import store_response
from app.problems import PROBLEM_JSON, Problem, install_problem_handlers
from core.store import FolderStore, ResultStore, S3Store, StoreNotFound
from tests.support import SeaweedServer, free_ports_with_grpc

SIZE = 150 * 1024  # more than two chunks


def make_app(store: ResultStore, *, redirect: bool = False) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.api_route("/jobs/{job_id}/files/{name:path}", methods=["GET", "HEAD"])
    async def download(job_id: str, name: str, request: Request) -> Response:
        try:
            return await store_response(
                store, job_id, name, request, media_type="image/png", redirect=redirect, presign_expiry_s=120
            )
        except StoreNotFound:
            raise Problem(404, "file-not-found", f"job {job_id} has no file {name!r}") from None

    return app


def s3_store(server: SeaweedServer, **overrides: str) -> S3Store:
    kwargs = {
        "endpoint_url": server.endpoint,
        "access_key_id": server.ACCESS_KEY,
        "secret_access_key": server.SECRET_KEY,
        "region": server.REGION,
        **overrides,
    }
    return S3Store(server.bucket, f"dl-{uuid.uuid4().hex[:12]}", **kwargs)


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    if request.param == "folder":
        return FolderStore(tmp_path / "results")
    return s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture
def stored(store: ResultStore) -> tuple[str, bytes]:
    job = secrets.token_hex(16)
    data = os.urandom(SIZE)
    store.put(job, "sample.png", data)
    return job, data


@pytest.fixture
def client(store: ResultStore) -> Iterator[TestClient]:
    with TestClient(make_app(store), follow_redirects=False) as c:
        yield c


def test_get_and_head(client: TestClient, store: ResultStore, stored: tuple[str, bytes]) -> None:
    job, data = stored
    info = store.stat(job, "sample.png")
    assert info is not None
    r = client.get(f"/jobs/{job}/files/sample.png")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(SIZE) and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == info.etag and r.headers["accept-ranges"] == "bytes"
    assert r.headers["last-modified"] == formatdate(info.last_modified, usegmt=True)
    assert r.headers["cache-control"] == "private, max-age=3600"
    h = client.head(f"/jobs/{job}/files/sample.png")
    assert h.status_code == 200 and h.content == b""
    assert {k: h.headers[k] for k in ("content-length", "etag", "last-modified", "accept-ranges", "content-type")} == {
        k: r.headers[k] for k in ("content-length", "etag", "last-modified", "accept-ranges", "content-type")
    }


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 20),
        ("bytes=100-", 100, SIZE),
        ("bytes=-50", SIZE - 50, SIZE),
        ("bytes=0-99999999", 0, SIZE),
        (f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE),
        ("bytes=70000-140000", 70000, 140001),  # across chunks
    ],
)
def test_range_206(client: TestClient, stored: tuple[str, bytes], header: str, start: int, end: int) -> None:
    job, data = stored
    r = client.get(f"/jobs/{job}/files/sample.png", headers={"Range": header})
    assert r.status_code == 206 and r.content == data[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    assert r.headers["content-length"] == str(end - start)
    h = client.head(f"/jobs/{job}/files/sample.png", headers={"Range": header})
    assert h.status_code == 206 and h.content == b"" and h.headers["content-range"] == r.headers["content-range"]


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", "bytes=99999999-99999999", "bytes=-0"])
def test_range_416(client: TestClient, stored: tuple[str, bytes], header: str) -> None:
    job, _ = stored
    r = client.get(f"/jobs/{job}/files/sample.png", headers={"Range": header})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{SIZE}"
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.json()["type"] == "urn:problem:range-not-satisfiable"


@pytest.mark.parametrize("header", ["bytes=abc", "items=0-10", "bytes=20-10", "bytes=0-1,5-6", "bytes=-"])
def test_ranges_that_are_ignored_give_the_whole_object(
    client: TestClient, stored: tuple[str, bytes], header: str
) -> None:
    job, data = stored
    r = client.get(f"/jobs/{job}/files/sample.png", headers={"Range": header})
    assert r.status_code == 200 and r.content == data


def test_etag_and_conditional_requests(client: TestClient, stored: tuple[str, bytes]) -> None:
    job, data = stored
    url = f"/jobs/{job}/files/sample.png"
    first = client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    for headers in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"other", {etag}'},
        {"If-None-Match": f"W/{etag}"},
        {"If-None-Match": "*"},
        {"If-Modified-Since": modified},
    ):
        for method in ("GET", "HEAD"):
            r = client.request(method, url, headers=headers)
            assert r.status_code == 304 and r.content == b"", headers
            assert r.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).content == data
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).content == data
    # If-None-Match wins over If-Modified-Since
    assert client.get(url, headers={"If-None-Match": '"other"', "If-Modified-Since": modified}).status_code == 200
    # If-Range: the current validator keeps the range, another gives the whole object
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).content == data[:10]
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": modified}).status_code == 206
    assert client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'}).content == data


def test_missing_and_refused_names_are_the_callers_404(client: TestClient, stored: tuple[str, bytes]) -> None:
    job, _ = stored
    for path in (f"/jobs/{job}/files/other.png", f"/jobs/{job}/files/a/b/c", f"/jobs/{'0' * 31}/files/sample.png"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["type"] == "urn:problem:file-not-found", path
    assert client.get(f"/jobs/{job}/files/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_redirect_to_a_presigned_url_with_the_same_bytes(s3_server: SeaweedServer) -> None:
    store = s3_store(s3_server)
    job, data = secrets.token_hex(16), os.urandom(SIZE)
    store.put(job, "sample.png", data)
    url = f"/jobs/{job}/files/sample.png"
    with (
        TestClient(make_app(store), follow_redirects=False) as streaming,
        TestClient(make_app(store, redirect=True), follow_redirects=False) as redirecting,
    ):
        streamed = streaming.get(url)
        r = redirecting.get(url)
        assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
        target = r.headers["location"]
        assert target.startswith(s3_server.endpoint) and "X-Amz-Expires=120" in target
        fetched = httpx.get(target)
        assert fetched.status_code == 200 and fetched.content == streamed.content == data
        assert fetched.headers["etag"] == streamed.headers["etag"]
        ranged = httpx.get(target, headers={"Range": "bytes=10-19"})  # the client's Range goes to the store
        assert ranged.status_code == 206 and ranged.content == data[10:20]
        # HEAD and revalidation are answered by the API; a missing object is still the caller's 404
        assert redirecting.head(url).status_code == 200
        assert redirecting.get(url, headers={"If-None-Match": streamed.headers["etag"]}).status_code == 304
        assert redirecting.get(f"/jobs/{job}/files/missing.png").status_code == 404


def test_redirect_without_presigning_streams(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    job = secrets.token_hex(16)
    store.put(job, "sample.png", b"png bytes")
    with TestClient(make_app(store, redirect=True), follow_redirects=False) as client:
        r = client.get(f"/jobs/{job}/files/sample.png")
    assert r.status_code == 200 and r.content == b"png bytes"


@pytest.mark.parametrize("failure", ["down", "credentials"])
def test_store_unavailable_is_503_problem_with_retry_after(s3_server: SeaweedServer, failure: str) -> None:
    secret = "a-secret-that-must-not-leak"
    if failure == "down":  # nothing listens there
        store = s3_store(s3_server, endpoint_url=f"http://127.0.0.1:{free_ports_with_grpc(1)[0]}")
    else:
        store = s3_store(s3_server, secret_access_key=secret)
    job = secrets.token_hex(16)
    with TestClient(make_app(store, redirect=True), follow_redirects=False) as client:
        for method in ("GET", "HEAD"):
            r = client.request(method, f"/jobs/{job}/files/sample.png", headers={"Range": "bytes=0-9"})
            assert r.status_code == 503 and r.headers["content-type"] == PROBLEM_JSON
            assert int(r.headers["retry-after"]) > 0
            if method == "GET":
                body = r.json()
                assert body["type"] == "urn:problem:store-unavailable" and body["status"] == 503
                assert body["title"] and body["detail"]
                assert secret not in r.text and s3_server.SECRET_KEY not in r.text and "127.0.0.1" not in r.text
