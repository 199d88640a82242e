"""The API's Prometheus metrics (``GET /metrics``): HTTP requests, ended jobs, rejections, and gauges from Redis.

- **HTTP**: every request but ``/metrics`` itself, by route template, method and status, and its latency
  (``app.observability.Observability``, a plain ASGI middleware).
- **Jobs**, counted once, with no Redis call: the API process that *accepted* a job remembers it (``JobMeter``:
  id -> operation and tenant, at most ``MAX_JOBS`` entries, none older than ``MAX_AGE_S``), and when the job's
  ``done`` event reaches its event hub (every API process receives every event) it counts the end by operation,
  status and tenant and observes the times queued, running and end to end from the timestamps of the done body. A
  job whose accepting process restarted before the job ended is not counted. Answers from the result cache are also
  counted as cache hits, by operation and tenant.
- **Rejected submissions** by reason (``queue_full``, ``invalid`` (422), ``bad_input`` (413, 415),
  ``unavailable`` (503), ``unauthorized`` (401), ``rate_limited`` and ``max_queued`` (429)) and tenant (``none``
  for a request without a known key). The label is always the tenant's name, never a key.
- **Gauges from Redis at scrape time** (``core.gauges``: one script per scrape, at most one a second per
  process): queue depth, jobs running, pending work in seconds, live workers; and the live event listeners of the
  API processes.

Several uvicorn processes on one host (``API_WORKERS``) share prometheus_client's multiprocess mode: each process
writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any of them adds them up. Unless the
operator sets that variable, a process that a supervisor spawned (uvicorn's ``--workers``) uses a directory of its
own supervisor (``<tmp>/diffusion-api-metrics-<pid>-<start time>``), made at the first start and removed by a later
one once that supervisor is gone. A single process needs none.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "diffusion"
MAX_JOBS = 100_000
MAX_AGE_S = 6 * 3600.0
SCRAPE_CACHE_S = 1.0
_DIR_PREFIX = "diffusion-api-metrics-"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart; '' elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` for this process (set in the environment before prometheus_client is
    imported): the operator's, else one per supervisor for a spawned worker process, else None."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return given
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return None
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{_DIR_PREFIX}*"):
        with contextlib.suppress(ValueError, IndexError):
            pid, started = stale.name.removeprefix(_DIR_PREFIX).split("-", 1)
            if not _alive(int(pid)) or (started and _start_time(int(pid)) not in ("", started)):
                shutil.rmtree(stale, ignore_errors=True)
    folder = base / f"{_DIR_PREFIX}{parent.pid}-{_start_time(parent.pid)}"
    folder.mkdir(exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return str(folder)


MULTIPROC_DIR = multiprocess_dir()

# prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported: only after the lines above
from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

from core.gauges import GaugeReader, Gauges  # noqa: E402
from core.record import parse_time  # noqa: E402

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
REJECT_REASONS = ("queue_full", "invalid", "bad_input", "unavailable", "unauthorized", "rate_limited", "max_queued")
NO_TENANT = "none"  # the tenant label of a request without a known key


class ApiMetrics:
    """The metrics one API process updates (see the module docstring)."""

    def __init__(self) -> None:
        # in multiprocess mode the values live in files and a scrape collects them all; else in this registry
        self.registry = None if MULTIPROC_DIR else CollectorRegistry()
        reg = self.registry
        self.http_requests = Counter(
            f"{PREFIX}_http_requests_total",
            "HTTP requests answered, by route template, method and status (not /metrics)",
            ["route", "method", "status"],
            registry=reg,
        )
        self.http_seconds = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "time from a request's arrival to the end of its answer (an event stream: its whole life)",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.jobs = Counter(
            f"{PREFIX}_jobs_total",
            "jobs ended, by operation, status (succeeded, failed, canceled) and tenant, counted by the API process "
            "that accepted them",
            ["operation", "status", "tenant"],
            registry=reg,
        )
        self.queued_s = Histogram(
            f"{PREFIX}_job_queued_seconds",
            "time from submission to the start of the job's last attempt (to its end for a job never started)",
            ["operation", "tenant"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.running_s = Histogram(
            f"{PREFIX}_job_running_seconds",
            "time from the start of the job's last attempt to its end",
            ["operation", "tenant"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.total_s = Histogram(
            f"{PREFIX}_job_seconds",
            "time from submission to the job's end (end to end)",
            ["operation", "tenant"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_submissions_total",
            "submissions refused, by reason: queue_full, invalid (422), bad_input (413, 415), unavailable (503), "
            "unauthorized (401), rate_limited and max_queued (429); and tenant ('none' without a known key)",
            ["reason", "tenant"],
            registry=reg,
        )
        self.cache_hits = Counter(
            f"{PREFIX}_cache_hits_total",
            "submissions answered from the result cache (no worker ran them), by operation and tenant",
            ["operation", "tenant"],
            registry=reg,
        )
        self.listeners = Gauge(
            f"{PREFIX}_event_listeners",
            "open event streams (GET /jobs/{id}/events), all API processes of the host together",
            registry=reg,
            multiprocess_mode="livesum",
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason, NO_TENANT)
        if reg is not None:
            ProcessCollector(registry=reg)

    def http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, method).observe(seconds)


class JobMeter:
    """The jobs this API process accepted, until their ``done`` event counts them (see the module docstring).
    Used from the event loop only."""

    def __init__(self, metrics: ApiMetrics, *, max_jobs: int = MAX_JOBS, max_age_s: float = MAX_AGE_S) -> None:
        self.metrics = metrics
        self.max_jobs = max_jobs
        self.max_age_s = max_age_s
        self._jobs: OrderedDict[str, tuple[str, str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def accepted(self, job_id: str, operation: str, tenant: str = "default") -> None:
        now = time.monotonic()
        self._jobs[job_id] = (operation, tenant, now)
        while self._jobs and (
            len(self._jobs) > self.max_jobs or now - next(iter(self._jobs.values()))[2] > self.max_age_s
        ):
            self._jobs.popitem(last=False)

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def counts(self, job_id: str) -> bool:
        """Whether this process accepted the job (its done event is counted here)."""
        return job_id in self._jobs

    def done(self, job_id: str, body: Mapping[str, Any]) -> None:
        """A job's ``done`` event: count it if this process accepted it (once: it is forgotten)."""
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return
        operation, tenant, status = entry[0], entry[1], str(body.get("status"))
        m = self.metrics
        m.jobs.labels(operation, status, tenant).inc()
        try:
            created, started, finished = (parse_time(body.get(k)) for k in ("created_at", "started_at", "finished_at"))
        except (TypeError, ValueError):
            return
        if created is None or finished is None:
            return
        m.total_s.labels(operation, tenant).observe(max((finished - created).total_seconds(), 0.0))
        m.queued_s.labels(operation, tenant).observe(max(((started or finished) - created).total_seconds(), 0.0))
        if started is not None:
            m.running_s.labels(operation, tenant).observe(max((finished - started).total_seconds(), 0.0))


class RedisGauges(Collector):
    """The gauges computed from Redis when scraped (``core.gauges``), at most once per ``SCRAPE_CACHE_S``."""

    def __init__(self, reader: GaugeReader) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._last: tuple[float, Gauges | None] = (-1e9, None)

    def gauges(self) -> Gauges | None:
        with self._lock:
            at, last = self._last
            if time.monotonic() - at < SCRAPE_CACHE_S:
                return last
            try:
                value: Gauges | None = self.reader.read()
            except Exception as exc:  # noqa: BLE001 - a scrape without Redis still serves the process metrics
                log.warning("metrics: could not read the queue from Redis: %s", exc)
                value = None
            self._last = (time.monotonic(), value)
            return value

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = self.gauges()
        up = GaugeMetricFamily(f"{PREFIX}_redis_up", "1 when the last scrape could read the queue from Redis")
        up.add_metric([], 0.0 if g is None else 1.0)
        yield up
        if g is None:
            return
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "jobs waiting in the queue", value=g.queue_depth)
        yield GaugeMetricFamily(f"{PREFIX}_jobs_running", "jobs that live workers are running", value=g.running)
        yield GaugeMetricFamily(f"{PREFIX}_workers", "live workers (heartbeat not expired)", value=g.workers)
        yield GaugeMetricFamily(
            f"{PREFIX}_pending_work_seconds",
            "estimated compute time of every queued and running job, in seconds of one worker: remaining steps "
            "times the measured step time of the operation (the autoscaling signal)",
            value=g.pending_work_s,
        )
        step = GaugeMetricFamily(
            f"{PREFIX}_step_seconds",
            "seconds per weighted step by operation (+upscale), as the live workers measured it",
            labels=["operation"],
        )
        for key, value in sorted(g.step_s.items()):
            step.add_metric([key], value)
        yield step


class _Scrape:
    """What one scrape collects: the process metrics and the gauges from Redis (no registration needed)."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Any]:
        for source in self.sources:
            yield from source.collect()


def render(metrics: ApiMetrics, gauges: RedisGauges | None) -> bytes:
    """The text exposition of a scrape: this process's metrics (every process's, in multiprocess mode) and the
    gauges from Redis."""
    own: Any = metrics.registry if metrics.registry is not None else MultiProcessCollector(None, MULTIPROC_DIR)  # type: ignore[no-untyped-call]
    return generate_latest(_Scrape(own, *([gauges] if gauges is not None else [])))


def process_exit() -> None:
    """In multiprocess mode, drop this process's live gauges (its counters stay: they keep adding up)."""
    if MULTIPROC_DIR:
        with contextlib.suppress(OSError):
            mark_process_dead(os.getpid(), MULTIPROC_DIR)  # type: ignore[no-untyped-call]
