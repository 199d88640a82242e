"""Worker entry point: ``python -m workers``.

Reads the settings, loads the resident models once, publishes what it can serve and why not the rest
(for /readyz and the API's 503 answers), sweeps expired results, then runs the no-fork worker. On SIGINT or
SIGTERM it finishes the job at hand, unregisters and exits 0; if Redis is already gone it says so in one
line instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import threading
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from core.protocol import capabilities_key
from core.settings import get_settings
from core.storage import sweep_expired
from workers import registry as model_registry
from workers.batcher import Batcher
from workers.cancellation import CancelWatch
from workers.worker import ResidentWorker

log = logging.getLogger("workers")


def _sweeper(results_dir: Path, max_age_s: float, stop: threading.Event, every_s: float = 600) -> None:
    while True:
        try:
            sweep_expired(results_dir, max_age_s)
        except Exception:
            log.warning("result sweep failed", exc_info=True)
        if stop.wait(every_s):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one resident-model RQ worker.")
    parser.add_argument("--name", default=None, help="worker name (default host:pid)")
    parser.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    args = parser.parse_args(argv)

    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.results_dir.mkdir(parents=True, exist_ok=True)

    batcher = Batcher(max_rows=settings.max_batch_rows).start() if settings.batching == "on" else None
    # With batching, the batcher thread loads and warms the models too: one thread does the process's heavy
    # torch work (see Batcher.call); without it, the main thread runs every job, so it loads them.
    registry = (
        batcher.call(lambda: model_registry.build_registry(settings))
        if batcher is not None
        else model_registry.build_registry(settings)
    )
    if not registry.operations():
        log.error("no model could be loaded; this worker serves nothing (see errors above)")

    redis = Redis.from_url(settings.redis_url)
    cancels = CancelWatch(redis)
    model_registry.install(registry, settings, batcher.run if batcher is not None else None, cancels)
    queue = Queue(settings.queue_name, connection=redis)
    name = args.name or f"{socket.gethostname()}:{os.getpid()}"
    worker = ResidentWorker(
        [queue],
        name=name,
        connection=redis,
        heartbeat_s=settings.worker_heartbeat_s,
        dead_after_s=settings.worker_dead_after_s,
        maintenance_interval=settings.worker_maintenance_s,
        default_result_ttl=settings.result_ttl_s,
        max_inflight=settings.max_inflight_jobs if batcher is not None else 1,
    )
    stop = threading.Event()
    try:
        cancels.start()
        redis.hset(capabilities_key(), name, json.dumps(registry.describe()))
        threading.Thread(target=_sweeper, args=(settings.results_dir, settings.result_ttl_s, stop), daemon=True).start()
        log.info(
            "worker %s ready on queue %r with %s; %s",
            name,
            settings.queue_name,
            registry.operations(),
            f"batching up to {settings.max_inflight_jobs} jobs, {settings.max_batch_rows} rows a forward"
            if batcher is not None
            else "one job at a time (BATCHING=off)",
        )
        worker.work(burst=args.burst, with_scheduler=False, logging_level=settings.log_level)
        redis.hdel(capabilities_key(), name)
    except RedisError as exc:
        log.error("worker %s stopped: Redis at %s is unreachable (%s)", name, settings.redis_url, exc)
        return 1
    finally:
        stop.set()
        cancels.stop()
        if batcher is not None:
            batcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
