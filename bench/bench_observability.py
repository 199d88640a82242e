"""What observability costs per job and per request (issue 22).

``jobs``: a fresh local stack (redis-server, one worker, uvicorn at log level info, i.e. with its access lines)
runs ``--jobs`` sequential one-digit jobs, each submitted with ``Prefer: wait=10`` and its PNG downloaded, with a
``/metrics`` scrape of the API (and of the worker, where it serves one) every ``--scrape-every`` jobs. It reports
Redis commands per job (``INFO commandstats``, the worker's idle upkeep included) and CPU seconds per job of the
API and the worker processes (``/proc/<pid>/stat``). Run it from two checkouts to compare (it needs nothing of
this issue: on a checkout without /metrics the scrapes are skipped)::

    .venv/bin/python bench/bench_observability.py jobs --jobs 200 [--env LOG_FORMAT=json --env WORKER_METRICS_PORT=0]

``middleware``: CPU per request of a trivial ``GET /jobs/{job_id}`` route called in-process through ASGI (no
sockets), bare, behind this service's ``Observability`` middleware, and behind prometheus-fastapi-instrumentator
(if installed)::

    .venv/bin/python bench/bench_observability.py middleware --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis as redis_client
from harness import ROOT, local_service, table

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def commands(client: redis_client.Redis) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in client.info("commandstats").items()}


def jobs(args: argparse.Namespace) -> list[tuple[str, str]]:
    from tests.support import free_port

    env = dict(item.split("=", 1) for item in args.env)
    worker_port = None
    if env.get("WORKER_METRICS_PORT") == "0":
        worker_port = free_port()
        env["WORKER_METRICS_PORT"] = str(worker_port)
    with local_service(workers=0, **env) as stack:
        stack.api.terminate()  # the harness starts uvicorn at log level warning: restart it at info (access lines)
        stack.api.wait(10)
        stack.start_api(log_level="info")
        stack.start_worker()
        http, r = stack.client, redis_client.Redis.from_url(stack.redis_url)
        params = {"digit": 7, "n": 1}
        has_metrics = http.get("/metrics").status_code == 200
        for i in range(10):  # warm-up
            http.post("/mnist/sample", params=params | {"seed": i}, headers={"Prefer": "wait=10"})
        time.sleep(1)
        api_pid, worker_pid = stack.api.pid, stack.workers[0].pid
        before = commands(r)
        api0, worker0, t0 = cpu_s(api_pid), cpu_s(worker_pid), time.perf_counter()
        latencies = []
        for i in range(args.jobs):
            started = time.perf_counter()
            body = http.post("/mnist/sample", params=params | {"seed": 100 + i}, headers={"Prefer": "wait=10"}).json()
            assert body["status"] == "succeeded", body
            assert http.get(body["result_url"]).status_code == 200
            latencies.append(time.perf_counter() - started)
            if has_metrics and args.scrape_every and i % args.scrape_every == 0:
                http.get("/metrics")
                if worker_port:
                    httpx.get(f"http://127.0.0.1:{worker_port}/metrics")
        wall = time.perf_counter() - t0
        api1, worker1 = cpu_s(api_pid), cpu_s(worker_pid)
        after = commands(r)
        scrape_ms = scrape_calls = None
        if has_metrics:  # what one scrape costs the API (and Redis), apart from the jobs
            scrape0, calls0 = cpu_s(api_pid), commands(r)
            for _ in range(50):
                http.get("/metrics")
                time.sleep(1.05)  # past the gauges' one-second cache: each scrape runs the script
            scrape_ms = 1000 * (cpu_s(api_pid) - scrape0) / 50
            calls1 = commands(r)
            scrape_calls = (sum(calls1.values()) - sum(calls0.values()) - calls1.get("cmdstat_info", 0)) / 50
        r.close()
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = {k.removeprefix("cmdstat_"): v for k, v in calls.items() if v and k != "cmdstat_info"}
    n = args.jobs
    top = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])[:8])
    return [
        ("checkout", str(ROOT)),
        ("settings", " ".join(args.env) or "defaults"),
        ("/metrics", f"scraped every {args.scrape_every} jobs" if has_metrics else "none"),
        ("jobs", str(n)),
        ("Redis commands per job", f"{sum(calls.values()) / n:.1f}"),
        ("largest", top),
        ("API CPU per job (ms)", f"{1000 * (api1 - api0) / n:.2f}"),
        ("worker CPU per job (ms)", f"{1000 * (worker1 - worker0) / n:.2f}"),
        ("latency p50 (ms)", f"{1000 * statistics.median(latencies):.1f}"),
        (
            "one /metrics scrape: API CPU (ms), Redis commands",
            f"{scrape_ms:.2f}, {scrape_calls:.1f}" if scrape_ms else "-",
        ),
        ("wall (s)", f"{wall:.1f}"),
    ]


async def _drive(app: Any, count: int) -> float:
    """CPU seconds per request of ``count`` GET /jobs/<id> through ``app`` (ASGI, in-process)."""
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        return None

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/jobs/0123456789abcdef0123456789abcdef",
            "raw_path": b"/jobs/0123456789abcdef0123456789abcdef",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), (b"accept", b"*/*")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }

    for _ in range(500):
        await app(scope(), receive, send)
    started = time.process_time()
    for _ in range(count):
        await app(scope(), receive, send)
    return (time.process_time() - started) / count


def middleware(args: argparse.Namespace) -> list[tuple[str, str]]:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from app.metrics import ApiMetrics
    from app.observability import Observability

    def make() -> FastAPI:
        app = FastAPI()

        @app.get("/jobs/{job_id}")
        def get_job(job_id: str) -> JSONResponse:
            return JSONResponse({"id": job_id, "status": "running", "progress": {"step": 1, "total": 2}})

        return app

    bare = make()
    ours = make()
    ours.add_middleware(Observability, metrics=ApiMetrics(), submit_paths=set())
    rows = []
    results = {"bare": [], "Observability (ours)": []}
    apps = {"bare": bare, "Observability (ours)": ours}
    try:
        from prometheus_fastapi_instrumentator import Instrumentator

        theirs = make()
        Instrumentator(excluded_handlers=["/metrics"]).instrument(theirs)
        apps["prometheus-fastapi-instrumentator"] = theirs
        results["prometheus-fastapi-instrumentator"] = []
    except ImportError:
        rows.append(("prometheus-fastapi-instrumentator", "not installed"))
    for _ in range(args.rounds):  # interleaved rounds: the machine's noise hits every variant alike
        for name, app in apps.items():
            results[name].append(asyncio.run(_drive(app, args.requests)))
    base = statistics.median(results["bare"])
    for name, values in results.items():
        cost = statistics.median(values)
        extra = "" if name == "bare" else f" (+{1e6 * (cost - base):.0f} µs)"
        rows.append((f"{name}: CPU per request (µs)", f"{1e6 * cost:.0f}{extra}"))
    rows.append(("requests x rounds", f"{args.requests} x {args.rounds}, median of the rounds"))
    rows += per_job_parts(args.requests)
    return rows


def per_job_parts(count: int) -> list[tuple[str, str]]:
    """CPU of the other per-job parts: a job's accept and done in the job meter, and one log line per format."""
    import io
    import logging

    from app.metrics import ApiMetrics, JobMeter
    from core import logs

    meter = JobMeter(ApiMetrics())
    body = {
        "status": "succeeded",
        "created_at": "2026-12-04T10:00:00.000Z",
        "started_at": "2026-12-04T10:00:00.020Z",
        "finished_at": "2026-12-04T10:00:00.080Z",
    }
    started = time.process_time()
    for i in range(count):
        meter.accepted(str(i), "mnist_sample")
        meter.done(str(i), body)
    rows = [("job meter: accept + done of one job (µs)", f"{1e6 * (time.process_time() - started) / count:.1f}")]
    record = logging.LogRecord("workers.loop", logging.INFO, __file__, 1, "job %s succeeded", ("0" * 32,), None)
    record.job_id, record.request_id = "0" * 32, "req-1"
    for fmt in ("text", "json"):
        formatter, sink = logs.formatter(fmt), io.StringIO()
        started = time.process_time()
        for _ in range(count):
            sink.write(formatter.format(record) + "\n")
        rows.append((f"one log line, LOG_FORMAT={fmt} (µs)", f"{1e6 * (time.process_time() - started) / count:.1f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    j = sub.add_parser("jobs")
    j.add_argument("--jobs", type=int, default=200)
    j.add_argument("--scrape-every", type=int, default=20)
    j.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the stack (WORKER_METRICS_PORT=0: a free one)"
    )
    m = sub.add_parser("middleware")
    m.add_argument("--requests", type=int, default=20000)
    m.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print(table(jobs(args) if args.what == "jobs" else middleware(args)))


if __name__ == "__main__":
    main()
