"""Worker death and load: no job is ever stuck or lost."""

from __future__ import annotations

import concurrent.futures as cf
import time

from tests.support import Stack, wait_until

LONG = {"digit": 4, "n": 100, "steps": 400, "seed": 9}


def _wait_running(stack: Stack, job_id: str) -> None:
    wait_until(lambda: (stack.job(job_id).get("progress") or {}).get("step", 0) >= 1, 60, what="the job to run")


def test_killed_worker_job_is_retried_once_and_completes(make_stack) -> None:
    stack = make_stack()
    doomed = stack.start_worker()
    job = stack.client.post("/mnist/sample", params=LONG).json()
    _wait_running(stack, job["id"])
    stack.kill_worker(doomed)  # kill -9 in the middle of sampling
    assert stack.job(job["id"])["status"] == "running"  # RQ cannot know yet
    stack.start_worker()
    body = stack.wait_terminal(job["id"], timeout=120)
    assert body["status"] == "succeeded", (body, stack.logs())
    assert body["attempts"] == 2
    assert stack.client.get(body["result_url"]).status_code == 200


def test_killed_worker_without_retries_fails_with_reason(make_stack) -> None:
    stack = make_stack(JOB_RETRIES="0")
    doomed = stack.start_worker()
    job = stack.client.post("/mnist/sample", params=LONG).json()
    _wait_running(stack, job["id"])
    stack.kill_worker(doomed)
    stack.start_worker()
    body = stack.wait_terminal(job["id"], timeout=60)
    assert body["status"] == "failed"
    assert "worker" in body["error"] and "died" in body["error"]


def test_200_concurrent_submissions_none_lost(stack: Stack) -> None:
    def submit(i: int) -> str:
        r = stack.client.post("/mnist/sample", params={"digit": i % 10, "n": 1, "steps": 1, "seed": i})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    with cf.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(200)))
    assert len(set(ids)) == 200
    deadline = time.monotonic() + 180
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            if stack.job(job_id)["status"] in ("succeeded", "failed", "canceled"):
                pending.discard(job_id)
        time.sleep(0.2)
    assert not pending, f"{len(pending)} jobs never finished"
    statuses = {stack.job(j)["status"] for j in ids}
    assert statuses == {"succeeded"}


def test_missing_checkpoint_worker_keeps_running_and_api_answers_503(make_stack, tmp_path) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    stack = make_stack(MNIST_CLASS_CHECKPOINT=str(tmp_path / "missing.safetensors"), MNIST_TIME_CHECKPOINT=str(corrupt))
    worker = stack.start_worker()
    ready = stack.client.get("/readyz").json()
    assert ready["operations"] == []
    r = stack.client.post("/mnist/sample", params={"digit": 3})
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert "mnist_class" in r.json()["detail"] and "missing.safetensors" in r.json()["detail"]
    assert worker.poll() is None  # no crash loop: the worker stays up and reports the reason
    log = (stack.tmp / f"{worker.worker_name}.log").read_text()
    assert "Traceback" not in log and "could not load mnist_class" in log
