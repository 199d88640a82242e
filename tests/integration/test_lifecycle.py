"""The job lifecycle on real processes (redis-server, `python -m workers`, uvicorn): Redis killed and restarted
under a busy worker, SIGTERM mid-job, and a cancel seen the same everywhere. RELIABILITY.md names these."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest
from redis import Redis
from rq.job import Job
from rq.registry import CanceledJobRegistry, FinishedJobRegistry, StartedJobRegistry

from core.lifecycle import service_queue
from tests.sse import read_events
from tests.support import ROOT, RedisServer, Stack, free_port, wait_until

LONG = {"digit": 4, "n": 100, "steps": 400}


def _status(stack: Stack, job_id: str) -> str | None:
    """The job's status, or None while the API cannot answer (Redis down: 503)."""
    try:
        r = stack.client.get(f"/jobs/{job_id}")
    except httpx.HTTPError:
        return None
    return r.json()["status"] if r.status_code == 200 else None


def _wait_all_ended(stack: Stack, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    bodies: dict[str, dict] = {}
    while time.monotonic() < deadline and len(bodies) < len(ids):
        for job_id in ids:
            if job_id not in bodies and _status(stack, job_id) in ("succeeded", "failed", "canceled"):
                bodies[job_id] = stack.job(job_id)
        time.sleep(0.2)
    missing = {j: _status(stack, j) for j in ids if j not in bodies}
    assert not missing, f"jobs not ended: {missing}\n{stack.logs()}"
    return bodies


def _wait_running(stack: Stack, job_id: str) -> None:
    wait_until(lambda: (stack.job(job_id).get("progress") or {}).get("step", 0) >= 1, 60, what="the job to run")


def test_redis_killed_and_restarted_under_a_busy_worker_loses_nothing(mnist_checkpoints, tmp_path) -> None:
    """The probe's case: jobs in flight and queued, Redis killed with SIGKILL and restarted on its data 3 s later.
    Every accepted job ends, none is left running or queued, and the worker process is the same one."""
    server = RedisServer(appendonly=True, data_dir=tmp_path / "redis").start()
    stack = Stack(server.url, mnist_checkpoints, tmp_path)
    try:
        stack.start_api()
        worker = stack.start_worker(MAX_INFLIGHT_JOBS="4")
        ids = [
            stack.client.post("/mnist/sample", params={"digit": i % 10, "n": 20, "steps": 40, "seed": i}).json()["id"]
            for i in range(24)
        ]
        wait_until(lambda: sum(stack.job(j)["status"] == "running" for j in ids) >= 2, 60, what="jobs in flight")
        server.proc.kill()  # SIGKILL: no chance to save anything beyond the append-only file (fsync always)
        server.proc.wait(10)
        time.sleep(3)
        server = RedisServer(appendonly=True, port=server.port, data_dir=server.dir).start()
        bodies = _wait_all_ended(stack, ids, 180)
        assert {b["status"] for b in bodies.values()} == {"succeeded"}, bodies
        assert worker.poll() is None  # the same worker process rode it out
        log = (stack.tmp / f"{worker.worker_name}.log").read_text()
        assert "Redis unreachable" in log and "Redis is back" in log
        # nothing left behind: no queued job, none in a worker's hands, every result downloadable
        redis = Redis.from_url(server.url)
        assert redis.llen(service_queue(stack.env["QUEUE_NAME"], redis).key) == 0
        assert redis.llen(f"svc:held:{worker.worker_name}") == 0
        for body in bodies.values():
            assert stack.client.get(body["result_url"]).status_code == 200
    finally:
        stack.stop()
        server.stop()


def test_sigterm_mid_job_hands_the_job_back_and_another_worker_finishes_it(make_stack) -> None:
    stack = make_stack(WORKER_SHUTDOWN_S="2")
    first = stack.start_worker()
    long = stack.client.post("/mnist/sample", params={**LONG, "seed": 1}).json()["id"]
    short = stack.client.post("/mnist/sample", params={"digit": 2, "n": 2, "steps": 2, "seed": 2}).json()["id"]
    _wait_running(stack, long)
    assert stack.wait_terminal(short, 30)["status"] == "succeeded"
    t0 = time.monotonic()
    first.send_signal(signal.SIGTERM)
    first.wait(2 + 5)  # WORKER_SHUTDOWN_S + 5
    assert time.monotonic() - t0 < 2 + 5 and first.returncode == 0
    body = stack.job(long)
    assert body["status"] == "queued" and body["attempts"] == 1  # handed back, not failed, no retry spent
    log = (stack.tmp / f"{first.worker_name}.log").read_text()
    assert "handed back to the queue" in log and "Traceback" not in log
    stack.start_worker()
    body = stack.wait_terminal(long, 120)
    assert body["status"] == "succeeded" and body["attempts"] == 2
    statuses = [e.data.get("status") for e in read_events(stack.client, long) if e.event in ("status", "done")]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]


def test_sigterm_lets_a_short_job_finish(make_stack) -> None:
    stack = make_stack(WORKER_SHUTDOWN_S="20")
    worker = stack.start_worker()
    job = stack.client.post("/mnist/sample", params={"digit": 5, "n": 50, "steps": 60, "seed": 3}).json()["id"]
    _wait_running(stack, job)
    worker.send_signal(signal.SIGTERM)
    worker.wait(25)
    body = stack.job(job)
    assert body["status"] == "succeeded" and body["attempts"] == 1
    assert worker.returncode == 0


def test_a_cancel_mid_run_is_canceled_everywhere(stack: Stack) -> None:
    job_id = stack.client.post("/mnist/sample", params={**LONG, "seed": 4}).json()["id"]
    _wait_running(stack, job_id)
    r = stack.client.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    body = stack.wait_terminal(job_id, 10)
    assert body["status"] == "canceled" and body["results"] == {} and body["finished_at"]
    events = read_events(stack.client, job_id)
    assert events[-1].event == "done" and events[-1].data["status"] == "canceled"
    assert [e.event for e in events].count("done") == 1
    redis = Redis.from_url(stack.redis_url)
    queue = service_queue(stack.env["QUEUE_NAME"], redis)
    assert Job.fetch(job_id, connection=redis).get_status() == "canceled"
    assert job_id in CanceledJobRegistry(queue=queue).get_job_ids(cleanup=False)
    assert job_id not in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)
    assert job_id not in FinishedJobRegistry(queue=queue).get_job_ids(cleanup=False)
    assert stack.client.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_make_run_rides_out_a_redis_restart(mnist_checkpoints, tmp_path) -> None:
    """`make run` against a Redis that blinks: the worker and the API stay up, and jobs run again after it."""
    server = RedisServer(appendonly=True, data_dir=tmp_path / "redis").start()
    port = free_port()
    env = {
        **os.environ,
        **mnist_checkpoints,
        "REDIS_URL": server.url,
        "PORT": str(port),
        "RESULTS_DIR": str(tmp_path / "results"),
        "OMP_NUM_THREADS": "1",
    }
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready() -> bool:
        try:
            return client.get("/readyz").json().get("ready") is True
        except (httpx.HTTPError, ValueError):
            return False

    def run_one() -> bool:
        job = client.post("/mnist/sample", params={"digit": 0, "n": 2, "steps": 3}, headers={"Prefer": "wait=20"})
        return job.status_code == 200 and job.json()["status"] == "succeeded"

    try:
        wait_until(ready, 90, interval=0.3, what="make run to be ready")
        assert run_one()
        server.proc.kill()
        server.proc.wait(10)
        time.sleep(2)
        server = RedisServer(appendonly=True, port=server.port, data_dir=server.dir).start()
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        wait_until(ready, 30, interval=0.3, what="the stack to be ready again")
        assert run_one()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        client.close()
        server.stop()


@pytest.mark.parametrize("wait", [True, False], ids=["prefer-wait", "poll"])
def test_prefer_wait_answers_with_the_final_body(stack: Stack, wait: bool) -> None:
    headers = {"Prefer": "wait=30"} if wait else {}
    r = stack.client.post("/mnist/sample", params={"digit": 6, "n": 2, "seed": 5}, headers=headers)
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    if wait:
        assert r.status_code == 200 and r.headers["preference-applied"] == "wait=30"
        assert r.json() == stack.job(job_id)  # exactly as a poll shows it
    else:
        assert r.status_code == 202 and "preference-applied" not in r.headers
