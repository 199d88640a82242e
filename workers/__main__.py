"""Worker entry point: ``python -m workers``.

Reads the settings, loads the resident models once, publishes what it can serve and why not the rest (for
/readyz and the API's 503 answers), sweeps expired results, then runs the work loop (``workers.loop``). It
waits for Redis if Redis is not up yet, and rides out Redis restarts. On SIGTERM or SIGINT it takes no new job,
lets the jobs it holds finish within WORKER_SHUTDOWN_S, hands the rest back to the queue, and exits 0; a
second SIGINT (Ctrl-C twice) hands them back at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from types import FrameType

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from core import logs, tracing
from core.lifecycle import Lifecycle, service_queue
from core.operations import OPERATIONS
from core.settings import Settings, get_settings
from core.store import ResultStore, StoreUnavailable, open_store
from core.tenants import load_tenants
from workers import registry as model_registry
from workers.batcher import Batcher
from workers.cancellation import CancelWatch
from workers.context import WorkerEnv, resolve
from workers.loop import CLAIM_BLOCK_S, JobPool, WorkLoop
from workers.telemetry import WorkerTelemetry, model_namer
from workers.wakeups import Wakeups

log = logging.getLogger("workers")


def _sweeper(store: ResultStore, max_age_s: float, stop: threading.Event, every_s: float = 600) -> None:
    """Expiry: the stored files of jobs older than RESULT_TTL_S go (their records expire in Redis on their own)."""
    while True:
        try:
            removed = store.sweep(max_age_s)
            if removed:
                log.info("removed the stored files of %d expired jobs", removed)
        except Exception:
            log.warning("result sweep failed", exc_info=True)
        if stop.wait(every_s):
            return


def connect(settings: Settings) -> Redis:
    """The worker's Redis client: short connect timeouts, a read timeout above the claim's block, and a few quick
    retries of a failed command (the loop adds its own backoff for longer outages)."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=CLAIM_BLOCK_S + 5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one resident-model worker.")
    parser.add_argument("--name", default=None, help="worker name (default host:pid)")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    args = parser.parse_args(argv)

    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    tenants = load_tenants(settings.tenants_file)  # TenantsFileError: refuse to start on a bad file
    tracing.setup(settings.otel_exporter_otlp_endpoint, "diffusion-worker")
    telemetry = WorkerTelemetry.create(settings.worker_metrics_port)
    name = args.name or f"{socket.gethostname()}:{os.getpid()}"

    batching = settings.batching == "on"
    max_inflight = settings.max_inflight_jobs if batching else 1
    batcher = Batcher(max_rows=settings.max_batch_rows, meter=telemetry.forwards).start() if batching else None
    pool = JobPool(max_inflight)
    # One thread does the process's heavy torch work (see Batcher.call): the batcher's with batching, else the
    # one job thread, which loads the models too.
    load = lambda: model_registry.build_registry(settings)  # noqa: E731
    registry = batcher.call(load) if batcher is not None else pool.call(load)
    for op in OPERATIONS.values():  # import the job functions now, not on the first job (diffusers is heavy)
        resolve(op.job)
    if not registry.operations():
        log.error("no model could be loaded; this worker serves nothing (see errors above)")
    telemetry.forwards.names = model_namer({name: m.model for name, m in registry.models.items()})

    redis = connect(settings)
    queue = service_queue(settings.queue_name, redis)
    lifecycle = Lifecycle(
        redis, queue, result_ttl_s=settings.result_ttl_s, tombstone_ttl_s=settings.tombstone_ttl_s, tenants=tenants
    )
    store = open_store(settings)
    cancels = CancelWatch(redis)
    wakeups = Wakeups(redis, queue.name)
    env = WorkerEnv(
        name=name,
        settings=settings,
        registry=registry,
        lifecycle=lifecycle,
        files=store,
        store_errors=(StoreUnavailable,),
        batcher=batcher,
        cancels=cancels,
        telemetry=telemetry,
        tenants=tenants,
    )
    loop = WorkLoop(
        env,
        max_inflight=max_inflight,
        heartbeat_s=settings.worker_heartbeat_s,
        dead_after_s=settings.worker_dead_after_s,
        maintenance_s=settings.worker_maintenance_s,
        shutdown_s=settings.worker_shutdown_s,
        describe=registry.describe,
        pool=pool,
        wakeups=wakeups,
    )
    if telemetry.metrics is not None and settings.worker_metrics_port is not None:
        telemetry.metrics.models(registry.describe())
        telemetry.metrics.cuda(registry.device)
        telemetry.metrics.inflight.set_function(lambda: float(loop.inflight))
        telemetry.metrics.serve(settings.worker_metrics_port)
        log.info("worker %s: Prometheus metrics on port %d", name, settings.worker_metrics_port)
    signals = {"count": 0}

    def stop(signum: int, frame: FrameType | None) -> None:
        signals["count"] += 1
        now = signals["count"] > 1
        log.info(
            "worker %s: %s received; %s",
            name,
            signal.Signals(signum).name,
            "handing the jobs back now"
            if now
            else f"finishing the jobs in flight (at most {settings.worker_shutdown_s} s)",
        )
        loop.request_stop(now=now)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sweeping = threading.Event()
    threading.Thread(
        target=_sweeper, args=(store, settings.result_ttl_s, sweeping, settings.results_sweep_s), daemon=True
    ).start()
    cancels.start()
    wakeups.start()
    log.info(
        "worker %s ready on queue %r%s with %s; %s",
        name,
        settings.queue_name,
        f" for {len(tenants)} tenants (fair share)" if tenants.from_file else "",
        registry.operations(),
        f"batching up to {settings.max_inflight_jobs} jobs, {settings.max_batch_rows} rows a forward"
        if batcher is not None
        else "one job at a time (BATCHING=off)",
    )
    try:
        loop.run(burst=args.burst)
    finally:
        sweeping.set()
        cancels.stop()
        wakeups.stop()
        if batcher is not None:
            batcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
