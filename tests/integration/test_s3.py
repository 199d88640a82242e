"""Results on a real S3 server (SeaweedFS), with the API and a worker as separate processes that share no folder:
every operation end to end, previews, stage II and the GIF, presigned redirects, DELETE, expiry, and the store
killed mid-job. No mock stands in for S3."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.store import S3Store
from tests.images import half_mask, noise
from tests.sse import read_events
from tests.support import RedisServer, SeaweedServer, Stack, wait_until

pytestmark = pytest.mark.slow


def _store(s3: SeaweedServer, prefix: str) -> S3Store:
    return S3Store(
        s3.bucket,
        prefix,
        endpoint_url=s3.endpoint,
        access_key_id=s3.ACCESS_KEY,
        secret_access_key=s3.SECRET_KEY,
        region=s3.REGION,
    )


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


class S3Stack:
    """An API and a worker on one queue, with results on S3, each with its own (empty) RESULTS_DIR."""

    def __init__(self, redis: RedisServer, s3: SeaweedServer, env: dict[str, str], tmp: Path, **worker_env: str):
        self.prefix = f"t-{uuid.uuid4().hex[:8]}"
        self.s3 = s3
        self.store = _store(s3, self.prefix)
        (tmp / "api").mkdir(parents=True)
        self.stack = Stack(redis.url, {**env, **s3.env(self.prefix)}, tmp / "api")
        self.stack.start_api()
        self.worker_dir = tmp / "worker-results"
        self.stack.start_worker(RESULTS_DIR=str(self.worker_dir), **worker_env)

    @property
    def client(self) -> httpx.Client:
        return self.stack.client

    def folders(self) -> list[Path]:
        return [Path(self.stack.env["RESULTS_DIR"]), self.worker_dir]

    def stop(self) -> None:
        self.stack.stop()


@pytest.fixture
def s3_stack(redis_server, s3_server, mnist_checkpoints, tiny_if, tmp_path) -> Iterator[S3Stack]:
    stack = S3Stack(redis_server, s3_server, {**mnist_checkpoints, **tiny_if}, tmp_path)
    yield stack
    stack.stop()


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _run_with_previews(stack: S3Stack, path: str, **request: object) -> tuple[dict, list[bytes]]:
    """Submit, follow the events, download each preview the moment it is announced (the job still runs)."""
    files = request.pop("files", None)
    if files is None:
        job = (
            stack.client.post(path, params=request)
            if path.startswith("/mnist")
            else stack.client.post(path, data=request)
        )
    else:
        job = stack.client.post(path, data=request, files=files)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    previews: list[bytes] = []

    def fetch_preview(event) -> bool:
        if event.event == "preview":
            r = stack.client.get(event.data["url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
            previews.append(r.content)
        return False

    events = read_events(stack.client, job_id, until=fetch_preview, timeout=180)
    assert events[-1].event == "done", events[-3:]
    return events[-1].data, previews


def test_every_operation_without_a_shared_folder(s3_stack: S3Stack) -> None:
    image = noise(48, 40, seed=1)
    mask = half_mask(48, 40)
    cases = [
        ("/mnist/sample", {"digit": 3, "n": 2, "steps": 6, "seed": 1, "previews": "true", "trajectory": "true"}),
        ("/sample", {"prompt": "a red panda", "seed": 2, "upscale": "true", "previews": "true"}),
        ("/sdedit", {"prompt": "a pencil drawing", "i_start": 20, "seed": 3, "files": {"image": ("p.png", image)}}),
        (
            "/inpaint",
            {"prompt": "a balloon", "seed": 4, "files": {"image": ("p.png", image), "mask": ("m.png", mask)}},
        ),
        ("/anagram", {"prompts": ["a campfire", "an old man"], "seed": 5, "previews": "true"}),
        ("/hybrid", {"prompt_low": "a skull", "prompt_high": "waterfalls", "seed": 6}),
        ("/denoise", {"t": 500, "method": "iterative", "seed": 7, "files": {"image": ("p.png", image)}}),
    ]
    for path, request in cases:
        body, previews = _run_with_previews(s3_stack, path, **dict(request))
        assert body["status"] == "succeeded", (path, body)
        if request.get("previews"):
            assert previews, path
        for name, url in body["results"].items():
            r = s3_stack.client.get(url)
            assert r.status_code == 200 and len(r.content) > 0, (path, name, r.text)
            assert r.headers["etag"] and r.headers["accept-ranges"] == "bytes"
            if name.endswith(".png"):
                _png_size(r.content)
            head = s3_stack.client.head(url)
            assert head.status_code == 200 and int(head.headers["content-length"]) == len(r.content)
            part = s3_stack.client.get(url, headers={"Range": "bytes=0-9"})
            assert part.status_code == 206 and part.content == r.content[:10]
            assert s3_stack.client.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        stored = s3_stack.store.list(body["id"])
        assert "manifest.json" in stored and all(name in stored for name in body["results"])
        if path == "/mnist/sample":
            assert {"trajectory.gif", "trajectory.png"} <= set(body["results"])
            with Image.open(io.BytesIO(s3_stack.client.get(body["results"]["trajectory.gif"]).content)) as gif:
                assert gif.format == "GIF" and gif.n_frames >= 2
        if path == "/sample":  # the stage-II result is the main file
            stage2 = s3_stack.client.get(body["result_url"]).content
            stage1 = s3_stack.client.get(body["results"]["result.png"]).content
            assert _png_size(stage2)[0] > _png_size(stage1)[0]
        if "files" in request:
            assert any(n.startswith("inputs/") for n in stored)  # the upload reached the worker through the store
    for folder in s3_stack.folders():
        assert _files_under(folder) == [], folder  # nothing written under either RESULTS_DIR


def test_presigned_redirect_has_the_streamed_bytes(redis_server, s3_server, mnist_checkpoints, tmp_path) -> None:
    streaming = S3Stack(redis_server, s3_server, mnist_checkpoints, tmp_path / "a")
    redirecting = Stack(
        redis_server.url,
        {
            **mnist_checkpoints,
            **s3_server.env(streaming.prefix),
            "QUEUE_NAME": streaming.stack.env["QUEUE_NAME"],
            "RESULTS_REDIRECT": "true",
            "RESULTS_PRESIGN_EXPIRY_S": "120",
        },
        tmp_path / "b",
    )
    try:
        (tmp_path / "b").mkdir()
        redirecting.start_api()
        r = streaming.client.post(
            "/mnist/sample", params={"digit": 8, "n": 3, "seed": 9}, headers={"Prefer": "wait=60"}
        )
        body = r.json()
        assert body["status"] == "succeeded"
        for name, url in body["results"].items():
            streamed = streaming.client.get(url).content
            redirect = redirecting.client.get(url, follow_redirects=False)
            assert redirect.status_code == 307 and redirect.headers["cache-control"] == "no-store"
            target = redirect.headers["location"]
            assert target.startswith(s3_server.endpoint) and "X-Amz-Signature" in target
            assert httpx.get(target).content == streamed, name
            assert redirecting.client.head(url).status_code == 200  # HEAD is answered, not redirected
    finally:
        redirecting.stop()
        streaming.stop()


def test_delete_leaves_no_object_behind(s3_stack: S3Stack) -> None:
    image = noise(40, 40, seed=2)
    r = s3_stack.client.post(
        "/sdedit", data={"prompt": "x", "seed": 1}, files={"image": ("p.png", image)}, headers={"Prefer": "wait=120"}
    )
    done = r.json()
    assert done["status"] == "succeeded" and s3_stack.store.list(done["id"])
    assert s3_stack.client.delete(f"/jobs/{done['id']}").status_code == 204
    assert s3_stack.store.list(done["id"]) == []
    gone = s3_stack.client.get(f"/jobs/{done['id']}")
    assert gone.status_code == 410 and gone.json()["type"] == "urn:problem:job-deleted"
    assert s3_stack.client.get(done["result_url"]).status_code == 410
    assert s3_stack.client.delete(f"/jobs/{done['id']}").status_code == 410
    # a running job: stopped, and what its worker stores after the delete is removed too
    running = s3_stack.client.post(
        "/mnist/sample", params={"digit": 1, "n": 50, "steps": 400, "previews": "true", "seed": 2}
    ).json()["id"]
    wait_until(lambda: s3_stack.store.list(running), 60, what="the running job's first preview")
    assert s3_stack.client.delete(f"/jobs/{running}").status_code == 204
    wait_until(lambda: s3_stack.store.list(running) == [], 20, what="the running job's objects to be gone")
    time.sleep(1.0)
    assert s3_stack.store.list(running) == []
    assert s3_stack.client.get(f"/jobs/{running}").status_code == 410


def test_results_expire_from_the_store(redis_server, s3_server, mnist_checkpoints, tmp_path) -> None:
    stack = S3Stack(
        redis_server,
        s3_server,
        {**mnist_checkpoints, "RESULT_TTL_S": "3"},
        tmp_path,
        RESULT_TTL_S="3",
        RESULTS_SWEEP_S="1",
    )
    try:
        body = stack.client.post("/mnist/sample", params={"digit": 2, "n": 2}, headers={"Prefer": "wait=60"}).json()
        assert body["status"] == "succeeded" and stack.store.list(body["id"])
        wait_until(lambda: stack.store.list(body["id"]) == [], 20, what="the sweep to remove the job's objects")
        wait_until(lambda: stack.client.get(f"/jobs/{body['id']}").status_code == 410, 10, what="the record to expire")
        gone = stack.client.get(f"/jobs/{body['id']}")
        assert gone.status_code == 410 and gone.json()["type"] == "urn:problem:job-expired"
    finally:
        stack.stop()


def test_the_store_killed_mid_job_and_restarted(s3_stack: S3Stack) -> None:
    s3 = s3_stack.s3
    earlier = s3_stack.client.post(
        "/mnist/sample", params={"digit": 5, "n": 4, "seed": 3}, headers={"Prefer": "wait=60"}
    ).json()
    before = {name: s3_stack.client.get(url).content for name, url in earlier["results"].items()}
    job_id = s3_stack.client.post(
        "/mnist/sample", params={"digit": 7, "n": 50, "steps": 150, "previews": "true", "seed": 4}
    ).json()["id"]
    wait_until(lambda: s3_stack.store.list(job_id), 60, what="the job to store its first preview")
    s3.kill()
    try:
        r = s3_stack.client.get(earlier["result_url"])
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] and r.json()["type"] == "urn:problem:store-unavailable"
        assert s3.endpoint not in r.text and s3.SECRET_KEY not in r.text
        sdedit = s3_stack.client.post(
            "/sdedit", data={"prompt": "x"}, files={"image": ("p.png", noise(40, 40, seed=5))}
        )
        assert sdedit.status_code == 503 and sdedit.json()["type"] == "urn:problem:store-unavailable"
        time.sleep(3)
    finally:
        s3.restart()
    body = s3_stack.stack.wait_terminal(job_id, 120)
    assert body["status"] == "succeeded", body  # its writes waited for the store and went through
    assert s3_stack.client.get(body["result_url"]).status_code == 200
    after = {name: s3_stack.client.get(url).content for name, url in earlier["results"].items()}
    assert after == before  # everything written before the store went away is intact
