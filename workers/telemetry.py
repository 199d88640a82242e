"""What a worker measures: each forward's cost per job, seconds per step by operation, and its Prometheus metrics.

- ``ForwardMeter`` sees every forward of the step driver (``models.driver.StepDriver.on_forward``): the batcher's
  (on the batcher thread, the request's job registered by ``Batcher.run`` on the job thread) or a lone job's
  (``drive``, on the job thread itself). It splits the forward's time between the jobs in it by their rows (the
  compute each job used, however many jobs shared the forward), observes the histograms of rows, jobs and time
  per forward by model, and records a ``forward`` span linked to each job's span when tracing is on.
- ``StepTimes``: an exponentially weighted mean per ``core.operations.cost_key`` of the seconds per weighted step
  (a job's compute over ``estimated_steps * step_weight``), published with every heartbeat (``step_s`` in the
  worker's ``svc:capabilities`` entry) for the API's pending-work gauge.
- ``WorkerMetrics``: the Prometheus metrics, served on ``WORKER_METRICS_PORT`` by prometheus_client's HTTP server
  in a daemon thread (unset: no server and no metric updates; the cost split and step times still run, the
  gauge needs them). Rows are also counted by tenant (``..._worker_rows_total{tenant}``: the fair share as the
  worker delivered it), the tenant of a job thread being ``TENANT``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core import tracing
from core.logs import JOB_ID
from core.operations import cost_key, estimated_steps, step_weight

PREFIX = "diffusion_worker"
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
JOBS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
FORWARD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
EWMA_ALPHA = 0.2  # weight of the newest job in the mean seconds per step

#: the tenant of the job the current thread runs (set by the work loop on the job thread)
TENANT: ContextVar[str | None] = ContextVar("tenant", default=None)


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.forward_rows = Histogram(
            f"{PREFIX}_forward_rows",
            "rows of one network forward (all jobs together), by model",
            ["model"],
            buckets=ROWS_BUCKETS,
            registry=reg,
        )
        self.forward_jobs = Histogram(
            f"{PREFIX}_forward_jobs",
            "jobs sharing one network forward, by model",
            ["model"],
            buckets=JOBS_BUCKETS,
            registry=reg,
        )
        self.forward_s = Histogram(
            f"{PREFIX}_forward_seconds",
            "time of one step of a network: its forward and the steps of its requests (host time; on CUDA, "
            "kernels queue asynchronously and the sum is what holds)",
            ["model"],
            buckets=FORWARD_BUCKETS,
            registry=reg,
        )
        self.rows = Counter(
            f"{PREFIX}_rows",
            "rows this worker ran in network forwards, by the tenant of the job they belong to",
            ["tenant"],
            registry=reg,
        )
        self.inflight = Gauge(f"{PREFIX}_jobs_in_flight", "jobs this worker is running", registry=reg)
        self.job_s = Histogram(
            f"{PREFIX}_job_seconds",
            "run time of a job on this worker (start to outcome), by operation and status",
            ["operation", "status"],
            buckets=JOB_BUCKETS,
            registry=reg,
        )
        self.load_s = Gauge(f"{PREFIX}_model_load_seconds", "time to load a resident model", ["model"], registry=reg)
        self.warmup_s = Gauge(
            f"{PREFIX}_model_warmup_seconds",
            "time to warm up (compile, capture) a resident model",
            ["model"],
            registry=reg,
        )
        self.heartbeat = Gauge(
            f"{PREFIX}_heartbeat_timestamp_seconds", "unix time of the worker's last heartbeat in Redis", registry=reg
        )
        self.step_s = Gauge(
            f"{PREFIX}_step_seconds",
            "mean seconds per weighted step by operation (+upscale), as published for the pending-work gauge",
            ["operation"],
            registry=reg,
        )
        self.gpu_allocated = Gauge(
            f"{PREFIX}_gpu_memory_allocated_bytes", "CUDA memory held by tensors (CUDA workers only)", registry=reg
        )
        self.gpu_reserved = Gauge(
            f"{PREFIX}_gpu_memory_reserved_bytes", "CUDA memory reserved by the caching allocator", registry=reg
        )

    def models(self, described: Mapping[str, Any]) -> None:
        """Load and warm-up times from ``ModelRegistry.describe()``."""
        for name, info in (described.get("models") or {}).items():
            self.load_s.labels(name).set(float(info.get("load_seconds") or 0.0))
            fast = info.get("fast_path") or {}
            self.warmup_s.labels(name).set(float(info.get("warm_up_s") or fast.get("warmup_s") or 0.0))

    def cuda(self, device: Any) -> None:
        """GPU memory of ``device``, read at each scrape (a CUDA device only)."""
        import torch

        if getattr(device, "type", None) != "cuda":
            return
        self.gpu_allocated.set_function(lambda: float(torch.cuda.memory_allocated(device)))
        self.gpu_reserved.set_function(lambda: float(torch.cuda.memory_reserved(device)))

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class StepTimes:
    """Seconds per weighted step by cost key (an exponentially weighted mean over the jobs; thread-safe)."""

    def __init__(self, alpha: float = EWMA_ALPHA) -> None:
        self.alpha = alpha
        self._mean: dict[str, float] = {}
        self._lock = threading.Lock()

    def job(self, kind: str, params: Mapping[str, Any], compute_s: float) -> float | None:
        """Add one finished job's compute; returns the seconds per weighted step it measured (None: no steps)."""
        weighted = estimated_steps(kind, params) * step_weight(kind, params)
        if weighted <= 0 or compute_s <= 0:
            return None
        sample = compute_s / weighted
        key = cost_key(kind, params)
        with self._lock:
            old = self._mean.get(key)
            self._mean[key] = sample if old is None else old + self.alpha * (sample - old)
        return sample

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {key: round(value, 9) for key, value in self._mean.items()}


ModelName = Callable[[Any], str]


def model_namer(models: Mapping[str, Any]) -> ModelName:
    """The registry name of the model a driver network runs (``models``: name -> resident model object), matched
    by identity through the usual wrappers (``net``, ``unet``, ``model``); else the network's class name."""
    known: dict[int, str] = {}
    for name, model in models.items():
        for obj in (model, getattr(model, "unet", None), getattr(model, "net", None)):
            if obj is not None:
                known.setdefault(id(obj), name)
    cache: dict[int, str] = {}

    def lookup(network: Any) -> str:
        found = cache.get(id(network))
        if found is None:
            candidates = (network, *(getattr(network, a, None) for a in ("net", "unet", "model")))
            found = next((known[id(c)] for c in candidates if c is not None and id(c) in known), None)
            found = cache[id(network)] = found or type(network).__name__
        return found

    return lookup


@dataclass
class _Owner:
    job_id: str | None
    span: Any
    tenant: str | None = None


class ForwardMeter:
    """See the module docstring. ``on_forward`` is the step driver's hook."""

    def __init__(self, metrics: WorkerMetrics | None = None, names: ModelName | None = None) -> None:
        self.metrics = metrics
        self.names: ModelName = names or (lambda network: type(network).__name__)
        self._owners: dict[int, _Owner] = {}
        self._cost: dict[str, float] = {}
        self._lock = threading.Lock()

    def register(self, request: Any) -> None:
        """On the job thread, before the request goes to the batcher: its job and the job's span."""
        owner = _Owner(JOB_ID.get(), tracing.current(), TENANT.get())
        with self._lock:
            self._owners[id(request)] = owner

    def unregister(self, request: Any) -> None:
        with self._lock:
            self._owners.pop(id(request), None)

    def take(self, job_id: str) -> float:
        """The compute seconds of the job's forwards so far (and forget them)."""
        with self._lock:
            return self._cost.pop(job_id, 0.0)

    def discard(self, job_id: str) -> None:
        with self._lock:
            self._cost.pop(job_id, None)

    def on_forward(self, network: Any, requests: Sequence[tuple[Any, int]], start: float, end: float) -> None:
        """One forward (and the steps of its requests) of ``requests`` [(request, rows)], from ``start`` to
        ``end`` (``time.perf_counter()``)."""
        seconds = end - start
        rows = sum(n for _, n in requests) or 1
        jobs: set[str] = set()
        spans = []
        tenants: dict[str, int] = {}
        with self._lock:
            for request, n in requests:
                owner = self._owners.get(id(request))
                job_id, span, tenant = (
                    (owner.job_id, owner.span, owner.tenant)
                    if owner is not None
                    else (JOB_ID.get(), tracing.current(), TENANT.get())
                )
                tenants[tenant or "default"] = tenants.get(tenant or "default", 0) + n
                if job_id is not None:
                    jobs.add(job_id)
                    self._cost[job_id] = self._cost.get(job_id, 0.0) + seconds * n / rows
                if span is not None:
                    spans.append(span)
        metrics = self.metrics
        if metrics is None and not tracing.active:
            return
        model = self.names(network)
        if metrics is not None:
            for tenant, n in tenants.items():
                metrics.rows.labels(tenant).inc(n)
            metrics.forward_rows.labels(model).observe(rows)
            metrics.forward_jobs.labels(model).observe(len(jobs) or len(requests))
            metrics.forward_s.labels(model).observe(seconds)
        if tracing.active:
            end_ns = time.time_ns() - int((time.perf_counter() - end) * 1e9)
            tracing.record(
                "forward",
                end_ns - int(seconds * 1e9),
                end_ns,
                links=spans,
                attributes={"model": model, "rows": rows, "jobs": len(jobs) or len(requests)},
            )


@dataclass
class WorkerTelemetry:
    """A worker process's meters (``WorkerEnv.telemetry``): metrics None unless ``WORKER_METRICS_PORT`` is set."""

    metrics: WorkerMetrics | None = None
    steps: StepTimes = field(default_factory=StepTimes)
    forwards: ForwardMeter = field(default_factory=ForwardMeter)

    @classmethod
    def create(cls, port: int | None) -> WorkerTelemetry:
        metrics = WorkerMetrics() if port else None
        return cls(metrics=metrics, forwards=ForwardMeter(metrics))

    def job_ended(self, kind: str, params: Mapping[str, Any], job_id: str, status: str, run_s: float | None) -> None:
        """A job's outcome: its compute becomes a step-time sample (succeeded jobs only), its run time a metric."""
        compute = self.forwards.take(job_id)
        if status == "succeeded":
            self.steps.job(kind, params, compute)
        if self.metrics is not None:
            if run_s is not None:
                self.metrics.job_s.labels(kind, status).observe(run_s)
            for key, value in self.steps.snapshot().items():
                self.metrics.step_s.labels(key).set(value)
