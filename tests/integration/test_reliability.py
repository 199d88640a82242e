"""Redis restarts, failing jobs and scale-out: every promise of RELIABILITY.md, through HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import RedisServer, Stack, enqueue_raw


@pytest.mark.parametrize(
    "func,code,needle",
    [
        ("tests.fault_jobs.out_of_memory", "out-of-memory", "out of memory"),
        ("tests.fault_jobs.bug", "internal-error", "internal error"),
    ],
)
def test_failing_job_fails_clearly_once_and_worker_goes_on(stack: Stack, func: str, code: str, needle: str) -> None:
    worker = stack.workers[0]
    job_id = enqueue_raw(stack, func)
    body = stack.wait_terminal(job_id, 30)
    assert body["status"] == "failed" and body["error_code"] == code and needle in body["error"], body
    assert body["attempts"] == 1  # an error raised by the job is not retried
    assert "Traceback" not in body["error"] and "/" not in body["error"]  # no traceback, no server path
    ok = stack.client.post("/mnist/sample", params={"digit": 8, "n": 2, "steps": 2}).json()
    assert stack.wait_terminal(ok["id"])["status"] == "succeeded"
    assert worker.poll() is None


def test_redis_restart_with_queued_jobs_loses_nothing(mnist_checkpoints, tmp_path) -> None:
    server = RedisServer(appendonly=True, data_dir=tmp_path / "redis").start()
    stack = Stack(server.url, mnist_checkpoints, tmp_path)
    try:
        stack.start_api()
        ids = [
            stack.client.post("/mnist/sample", params={"digit": i, "n": 2, "steps": 3, "seed": i}).json()["id"]
            for i in range(10)
        ]
        server.stop()  # SIGTERM: Redis syncs its append-only file and exits
        assert stack.client.post("/mnist/sample", params={"digit": 1}).status_code == 503  # no Redis: 503, not 500
        server = RedisServer(appendonly=True, port=server.port, data_dir=server.dir).start()
        assert all(stack.job(i)["status"] == "queued" for i in ids)
        stack.start_worker()
        for job_id in ids:
            assert stack.wait_terminal(job_id, 60)["status"] == "succeeded"
    finally:
        stack.stop()
        server.stop()


def test_two_workers_share_the_queue_and_no_job_runs_twice(make_stack) -> None:
    stack = make_stack()
    stack.start_worker()
    stack.start_worker()
    ids = [
        stack.client.post("/mnist/sample", params={"digit": i % 10, "n": 10, "steps": 30, "seed": i}).json()["id"]
        for i in range(24)
    ]
    bodies = [stack.wait_terminal(job_id, 120) for job_id in ids]
    assert {b["status"] for b in bodies} == {"succeeded"}
    assert {b["attempts"] for b in bodies} == {1}
    results = Path(stack.env["RESULTS_DIR"])
    ran_on = [json.loads((results / job_id / "manifest.json").read_text())["worker"] for job_id in ids]
    names = {w.worker_name for w in stack.workers}
    assert set(ran_on) == names  # both workers took jobs
    assert len(ran_on) == len(set(ids)) == 24
