"""End to end through HTTP: real Redis, real worker process, real uvicorn, small checkpoints."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from tests.support import Stack, wait_until


def _png(stack: Stack, body: dict) -> Image.Image:
    r = stack.client.get(body["result_url"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


def test_every_digit_end_to_end(stack: Stack) -> None:
    for digit in [*range(10), None]:
        params = {"n": 12, "steps": 4, "seed": 1} | ({"digit": digit} if digit is not None else {})
        r = stack.client.post("/mnist/sample", params=params)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/jobs/{r.json()['id']}"
        assert r.json()["status"] in ("queued", "running", "succeeded")
        body = stack.wait_terminal(r.json()["id"], 60)
        assert body["status"] == "succeeded", (body, stack.logs())
        assert (body["progress"]["step"], body["progress"]["total"]) == (4, 4)
        assert body["params"]["digit"] == digit and body["params"]["seed"] == 1
        assert body["started_at"] and body["finished_at"] and body["created_at"]
        img = _png(stack, body)
        assert img.size == (280, 56) and img.mode == "L"  # 10 columns, 2 rows of 28x28, no padding
        assert "manifest.json" in body["results"]
        manifest = stack.client.get(body["results"]["manifest.json"]).json()
        assert manifest["seed"] == 1 and manifest["request"]["n"] == 12
        assert manifest["model"]["name"] == ("mnist_time" if digit is None else "mnist_class")


@pytest.mark.parametrize("n,size", [(1, (28, 28)), (3, (84, 28)), (10, (280, 28)), (25, (280, 84))])
def test_grid_size(stack: Stack, n: int, size: tuple[int, int]) -> None:
    r = stack.client.post("/mnist/sample", params={"digit": 3, "n": n, "steps": 2})
    body = stack.wait_terminal(r.json()["id"])
    assert _png(stack, body).size == size


def test_same_seed_same_bytes_other_seed_differs(stack: Stack) -> None:
    def run(seed: int) -> bytes:
        # cache=false: the second run must compute its bytes, not take them from the result cache
        r = stack.client.post("/mnist/sample", params={"digit": 5, "n": 4, "steps": 5, "seed": seed, "cache": "false"})
        body = stack.wait_terminal(r.json()["id"])
        return stack.client.get(body["result_url"]).content

    a, b, c = run(123), run(123), run(124)
    assert a == b
    assert a != c


def test_cancel_queued_and_running_within_a_second(make_stack) -> None:
    stack = make_stack()
    # queued: no worker yet, so the job must stay queued until canceled
    queued = stack.client.post("/mnist/sample", params={"digit": 1, "n": 1, "steps": 2}).json()
    assert queued["status"] == "queued" and queued["queue_position"] == 0
    r = stack.client.post(f"/jobs/{queued['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled"

    stack.start_worker()
    running = stack.client.post("/mnist/sample", params={"digit": 1, "n": 100, "steps": 500}).json()
    wait_until(lambda: (stack.job(running["id"]).get("progress") or {}).get("step", 0) >= 2, 60, what="progress")
    t0 = time.monotonic()
    assert stack.client.post(f"/jobs/{running['id']}/cancel").status_code == 202
    body = stack.wait_terminal(running["id"], timeout=5)
    assert body["status"] == "canceled"
    assert time.monotonic() - t0 < 1.0
    assert body["progress"]["step"] < 500
    assert stack.client.get(f"/jobs/{running['id']}/result").status_code == 409
    # a finished job cannot be canceled again
    assert stack.client.post(f"/jobs/{running['id']}/cancel").status_code == 409
    # and the worker goes on serving
    ok = stack.client.post("/mnist/sample", params={"digit": 2, "n": 1, "steps": 2}).json()
    assert stack.wait_terminal(ok["id"])["status"] == "succeeded"


def test_head_on_results_answers_like_get_without_a_body(stack: Stack) -> None:
    body = stack.wait_terminal(stack.client.post("/mnist/sample", params={"digit": 5, "n": 2, "steps": 2}).json()["id"])
    for url in (body["result_url"], body["results"]["manifest.json"]):
        get, head = stack.client.get(url), stack.client.head(url)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert int(head.headers["content-length"]) == len(get.content)
    assert stack.client.head(f"/jobs/{body['id']}/files/nope.png").status_code == 404


def test_started_at_stays_put_across_polls(stack: Stack) -> None:
    job = stack.client.post("/mnist/sample", params={"digit": 2, "n": 20, "steps": 200}).json()
    running = stack.wait_status(job["id"], "running", 30)
    seen = {running["started_at"]}
    for _ in range(5):
        seen.add(stack.job(job["id"])["started_at"])
        time.sleep(0.05)
    stack.client.post(f"/jobs/{job['id']}/cancel")
    seen.add(stack.wait_terminal(job["id"])["started_at"])
    assert len(seen) == 1, seen
