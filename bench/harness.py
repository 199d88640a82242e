"""Shared by the service benchmarks: a service to measure (a given URL, or a fresh local stack
started with the same harness the integration tests use) and percentile helpers."""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import RedisServer, Stack  # noqa: E402


@contextlib.contextmanager
def local_service(workers: int = 1, **env: str) -> Iterator[Stack]:
    """redis-server + `workers` workers + the API on free loopback ports (shipped checkpoints by default)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    server = RedisServer(data_dir=tmp / "redis").start()
    stack = Stack(
        server.url,
        {
            "WORKER_HEARTBEAT_S": "5",
            "WORKER_DEAD_AFTER_S": "30",
            "OMP_NUM_THREADS": "2",
            "MAX_QUEUE_DEPTH": "100000",
            **env,
        },
        tmp,
    )
    try:
        stack.start_api()
        for _ in range(workers):
            stack.start_worker()
        yield stack
    finally:
        stack.stop()
        server.stop()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(min(round(q) - 1, 98), 0)]


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value |", f"| {'-' * width} | --- |"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)
