"""Metrics, JSON logs and the dashboard on a real running service: redis-server, a worker process and uvicorn.

One stack for the module (LOG_FORMAT=json, uvicorn at log level info, the worker's metrics on a free port): a
backlog is submitted while no worker runs (pending work above 0, one job canceled while queued), then the worker
starts and takes the backlog in one round trip (so its jobs share forwards), and every check reads the two
/metrics endpoints (parsed with prometheus_client's parser) and the processes' logs.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, RedisServer, Stack, free_port, wait_until

N = 5  # jobs that run
API_KEY = "test-key-0123456789-never-logged"
PARAMS = {"digit": 3, "n": 4, "steps": 12}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, **headers: str) -> Samples:
    text = httpx.get(url, headers=headers, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


class Observed:
    def __init__(self, stack: Stack, worker_port: int) -> None:
        self.stack = stack
        self.worker_url = f"http://127.0.0.1:{worker_port}/metrics"
        self.api_url = f"{stack.client.base_url}/metrics"
        self.ids: list[str] = []
        self.canceled = ""
        self.before: Samples = {}
        self.backlog: Samples = {}
        self.after: Samples = {}
        self.worker: Samples = {}
        self.submit_answer: httpx.Response | None = None
        self.rejected: dict[str, int] = {}

    def api(self) -> Samples:
        return scrape(self.api_url)


@pytest.fixture(scope="module")
def observed(redis_server: RedisServer, mnist_checkpoints: dict[str, str], tmp_path_factory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observability")
    port = free_port()
    stack = Stack(redis_server.url, {**mnist_checkpoints, "LOG_FORMAT": "json", "API_KEY": API_KEY}, tmp)
    stack.client.headers["X-API-Key"] = API_KEY
    seen = Observed(stack, port)
    try:
        stack.start_api(log_level="info")
        seen.before = seen.api()
        # a backlog while no worker runs: queued jobs, one canceled while queued (the API's own FINISH)
        for i in range(N):
            r = stack.client.post("/mnist/sample", params=PARAMS | {"seed": i}, headers={"X-Request-ID": f"req-{i}"})
            assert r.status_code == 202, r.text
            if i == 0:
                seen.submit_answer = r
            seen.ids.append(r.json()["id"])
        seen.canceled = stack.client.post("/mnist/sample", params=PARAMS).json()["id"]
        # the gauges from Redis are cached for a second (SCRAPE_CACHE_S)
        seen.backlog = wait_until(
            lambda: b if value(b := seen.api(), "diffusion_queue_depth") == N + 1 else None, 5, what="the backlog"
        )
        assert stack.client.post(f"/jobs/{seen.canceled}/cancel").status_code == 202
        # refused submissions, one per reason the test can cause
        seen.rejected["invalid"] = stack.client.post("/mnist/sample", params={"n": 0}).status_code
        seen.rejected["unauthorized"] = httpx.post(f"{stack.client.base_url}/mnist/sample", params=PARAMS).status_code
        stack.start_worker(WORKER_METRICS_PORT=str(port))
        for job_id in seen.ids:
            assert stack.wait_terminal(job_id)["status"] == "succeeded"

        def settled() -> Samples | None:
            after = seen.api()
            ended = sum(
                value(after, "diffusion_jobs_total", operation="mnist_sample", status=s, tenant="default")
                for s in ("succeeded", "canceled")
            ) - sum(
                value(seen.before, "diffusion_jobs_total", operation="mnist_sample", status=s, tenant="default")
                for s in ("succeeded", "canceled")
            )
            steps = value(after, "diffusion_step_seconds", operation="mnist_sample")
            done = ended >= N + 1 and value(after, "diffusion_pending_work_seconds") == 0 and steps > 0
            return after if done else None

        seen.after = wait_until(settled, 30, interval=0.3, what="the job counters and the pending work to settle")
        seen.worker = scrape(seen.worker_url)
        yield seen
    finally:
        stack.stop()


def test_job_counters_rose_by_exactly_the_jobs_with_their_labels(observed: Observed) -> None:
    before, after = observed.before, observed.after

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ours = {"operation": "mnist_sample", "tenant": "default"}  # no tenants file: every job is the default tenant's
    assert delta("diffusion_jobs_total", **ours, status="succeeded") == N
    assert delta("diffusion_jobs_total", **ours, status="canceled") == 1
    assert delta("diffusion_jobs_total", **ours, status="failed") == 0
    jobs = {
        (dict(labels)["operation"], dict(labels)["status"]) for name, labels in after if name == "diffusion_jobs_total"
    }
    assert jobs == {("mnist_sample", "succeeded"), ("mnist_sample", "canceled")}
    for histogram in ("diffusion_job_seconds", "diffusion_job_queued_seconds"):
        assert delta(f"{histogram}_count", **ours) == N + 1
    assert delta("diffusion_job_running_seconds_count", **ours) == N  # the canceled never ran
    assert delta("diffusion_job_seconds_sum", **ours) > 0
    # the HTTP metrics: by route template, method and status; /metrics itself is not counted
    assert delta("diffusion_http_requests_total", route="/mnist/sample", method="POST", status="202") == N + 1
    assert delta("diffusion_http_requests_total", route="/jobs/{job_id}/cancel", method="POST", status="202") == 1
    assert not any(dict(labels).get("route") == "/metrics" for _, labels in after)
    assert delta("diffusion_http_request_duration_seconds_count", route="/mnist/sample", method="POST") == N + 3
    # rejections by reason
    assert observed.rejected == {"invalid": 422, "unauthorized": 401}
    assert delta("diffusion_rejected_submissions_total", reason="invalid", tenant="default") == 1
    assert delta("diffusion_rejected_submissions_total", reason="unauthorized", tenant="none") == 1
    assert delta("diffusion_rejected_submissions_total", reason="queue_full", tenant="none") == 0
    # no label carries an id
    for _, labels in after:
        for label, text in labels:
            assert label in {"operation", "status", "model", "route", "method", "reason", "tenant", "le", "quantile"}
            assert not re.fullmatch(r"[0-9a-f]{32}", text)


def test_pending_work_is_above_zero_while_a_backlog_waits_and_zero_after(observed: Observed) -> None:
    backlog, after = observed.backlog, observed.after
    assert value(backlog, "diffusion_queue_depth") == N + 1
    assert value(backlog, "diffusion_workers") == 0
    # no worker has measured a step yet: PENDING_STEP_S_DEFAULT (0.05 s) per weighted step (steps x n x 2 evals)
    per_job = PARAMS["steps"] * PARAMS["n"] * 2 * 0.05
    assert value(backlog, "diffusion_pending_work_seconds") == pytest.approx((N + 1) * per_job)
    assert value(after, "diffusion_pending_work_seconds") == 0
    assert value(after, "diffusion_queue_depth") == 0 and value(after, "diffusion_jobs_running") == 0
    assert value(after, "diffusion_workers") == 1 and value(after, "diffusion_redis_up") == 1
    measured = value(after, "diffusion_step_seconds", operation="mnist_sample")
    assert 0 < measured < 1  # the worker's measure, published with its heartbeat
    assert value(observed.worker, "diffusion_worker_step_seconds", operation="mnist_sample") > 0


def test_the_worker_batched_the_overlapping_jobs(observed: Observed) -> None:
    worker = observed.worker
    model = "mnist_class"
    forwards = value(worker, "diffusion_worker_forward_jobs_count", model=model)
    alone = value(worker, "diffusion_worker_forward_jobs_bucket", model=model, le="1.0")
    assert forwards > 0 and forwards - alone > 0, "no forward had more than one job"
    assert value(worker, "diffusion_worker_forward_jobs_sum", model=model) > forwards
    # rows: 4 digits x (conditional + unconditional) per job and forward
    assert value(worker, "diffusion_worker_forward_rows_sum", model=model) >= 8 * forwards
    assert value(worker, "diffusion_worker_forward_seconds_count", model=model) == forwards
    assert value(worker, "diffusion_worker_job_seconds_count", operation="mnist_sample", status="succeeded") == N
    assert value(worker, "diffusion_worker_jobs_in_flight") == 0
    assert value(worker, "diffusion_worker_model_load_seconds", model=model) > 0
    assert value(worker, "diffusion_worker_heartbeat_timestamp_seconds") > time.time() - 60


def test_request_ids_are_echoed_and_stored_with_the_job(observed: Observed) -> None:
    answer = observed.submit_answer
    assert answer is not None and answer.headers["x-request-id"] == "req-0"
    assert answer.json()["request_id"] == "req-0"
    assert observed.stack.job(observed.ids[0])["request_id"] == "req-0"
    made = observed.stack.client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    bad = observed.stack.client.get("/healthz", headers={"X-Request-ID": "x" * 201}).headers["x-request-id"]
    assert bad != "x" * 201 and re.fullmatch(r"[0-9a-f]{32}", bad)


def _log_lines(folder: Path) -> dict[str, list[str]]:
    return {p.stem: [line for line in p.read_text().splitlines() if line.strip()] for p in folder.glob("*.log")}


def test_with_log_format_json_every_line_is_json_with_the_job_ids(observed: Observed) -> None:
    observed.stack.client.get("/healthz")  # an access line
    time.sleep(0.3)
    files = _log_lines(observed.stack.tmp)
    assert "api" in files and any(name.startswith("w") for name in files)
    records: list[dict[str, Any]] = []
    for name, lines in files.items():
        assert lines, f"{name}.log is empty"
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{name}.log has a line that is not JSON: {line!r}")
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    assert {record["logger"] for record in records} >= {"uvicorn.access", "uvicorn.error", "workers.loop"}
    job_ids = {record.get("job_id") for record in records}
    assert set(observed.ids) | {observed.canceled} <= job_ids | {observed.canceled} and set(observed.ids) <= job_ids
    # the worker's lines about a job carry the request id it was submitted with
    started = [r for r in records if r.get("job_id") == observed.ids[1] and r["logger"] == "workers.loop"]
    assert started and all(r.get("request_id") == "req-1" for r in started)
    access = [r for r in records if r["logger"] == "uvicorn.access" and "/mnist/sample" in r["message"]]
    assert any(r.get("request_id") == "req-2" for r in access)
    text = "\n".join("\n".join(lines) for lines in files.values())
    assert API_KEY not in text


def test_every_metric_of_the_dashboard_is_exported(observed: Observed) -> None:
    exported = names(observed.api()) | names(scrape(observed.worker_url))
    dashboard = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(diffusion_[a-z_]+)\b", target["expr"])
    }
    assert len(used) >= 15
    assert used <= exported, f"the dashboard uses metrics no endpoint exports: {sorted(used - exported)}"


def test_several_uvicorn_processes_add_up(make_stack) -> None:
    """Two uvicorn processes behind one supervisor (uvicorn --workers 2): each counts the jobs it accepted, and a
    scrape of either reports the sum (prometheus_client's multiprocess mode in a directory of the supervisor)."""
    stack = make_stack()
    stack.api.terminate()
    stack.api.wait(10)
    stack.start_api(processes=2)
    stack.start_worker()
    before = [scrape(f"{stack.client.base_url}/metrics") for _ in range(4)]
    jobs = 8
    for i in range(jobs):
        # a fresh connection each time, so that the supervisor's processes share the submissions
        r = httpx.post(
            f"{stack.client.base_url}/mnist/sample", params=PARAMS | {"seed": i}, headers={"Prefer": "wait=20"}
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text

    def counted() -> list[Samples] | None:
        scrapes = [scrape(f"{stack.client.base_url}/metrics", Connection="close") for _ in range(6)]
        ours = {"operation": "mnist_sample", "status": "succeeded", "tenant": "default"}
        done = [value(s, "diffusion_jobs_total", **ours) for s in scrapes]
        return scrapes if all(d - value(before[0], "diffusion_jobs_total", **ours) == jobs for d in done) else None

    scrapes = wait_until(counted, 20, interval=0.3, what="every process's scrape to count every job")
    posts = [
        value(s, "diffusion_http_requests_total", route="/mnist/sample", method="POST", status="200") for s in scrapes
    ]
    assert set(posts) == {float(jobs)}
    folders = list(Path(tempfile.gettempdir()).glob(f"diffusion-api-metrics-{stack.api.pid}-*"))
    assert len(folders) == 1 and any(folders[0].glob("counter_*.db"))
