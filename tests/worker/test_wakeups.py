"""A worker blocked in its claim (``BLMOVE`` on the normal list) and a job of another priority: the announcement ends
the wait at once (``CLIENT UNBLOCK``), as a stop request does, and the job's ``done`` body keeps its priority.

The claim's block is raised to 8 s here, so that a job that waited for the block to run out could not pass for one
that was woken: each test asserts an end well before it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

import workers.loop
from app import jobs as api_jobs
from core import events
from core.lifecycle import Lifecycle
from core.operations import OPERATIONS
from core.settings import Settings
from core.store import FolderStore
from tests.support import wait_until
from workers.context import WorkerEnv
from workers.loop import WorkLoop
from workers.wakeups import Wakeups

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCK_S = 8.0


@pytest.fixture
def running(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, env: WorkerEnv, lifecycle: Lifecycle
) -> Iterator[tuple[WorkLoop, threading.Thread]]:
    """A work loop with its wakeups, in a thread, blocked in its claim on an empty queue."""
    monkeypatch.setattr(workers.loop, "CLAIM_BLOCK_S", BLOCK_S)
    redis = Redis.from_url(settings.redis_url, socket_timeout=BLOCK_S + 5)
    wakeups = Wakeups(redis, lifecycle.queue.name).start()
    loop = WorkLoop(
        env,
        max_inflight=2,
        heartbeat_s=1,
        dead_after_s=30,
        maintenance_s=60,
        shutdown_s=5,
        describe=env.registry.describe,
        wakeups=wakeups,
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    wait_until(lambda: _blocked_in_blmove(lifecycle.redis), 10, what="the loop blocked in BLMOVE")
    yield loop, thread
    loop.request_stop(now=True)
    thread.join(10)
    wakeups.stop()
    redis.close()


def _blocked_in_blmove(redis: Redis) -> bool:
    return any(c.get("cmd") == "blmove" and "b" in c.get("flags", "") for c in redis.client_list())


def _unblocks(redis: Redis) -> int:
    stats: dict[str, Any] = redis.info("commandstats")
    return int(stats.get("cmdstat_client|unblock", {}).get("calls", 0))


@pytest.mark.parametrize("priority", ["high", "low"])
def test_a_job_of_another_priority_starts_at_once_on_a_blocked_worker(
    running: tuple[WorkLoop, threading.Thread], lifecycle: Lifecycle, settings: Settings, priority: str
) -> None:
    unblocks = _unblocks(lifecycle.redis)
    op = OPERATIONS["mnist_sample"]
    params = op.params.bounded(settings)(digit=3, n=1, seed=7, priority=priority)
    began = time.monotonic()
    body, _ = api_jobs.submit(lifecycle, FolderStore(settings.results_dir), settings, op, params)
    assert body["priority"] == priority and body["status"] == "queued"

    def ended() -> bool:
        record = lifecycle.read(body["id"])
        return record is not None and record.state.terminal

    wait_until(ended, BLOCK_S - 3, interval=0.02, what=f"the {priority} job's end, well before the claim's block ends")
    assert time.monotonic() - began < BLOCK_S - 3
    assert _unblocks(lifecycle.redis) > unblocks  # it was woken, not found by a claim that ran out
    stream = [events.parse_entry(body["id"], i, f) for i, f in lifecycle.redis.xrange(events.stream_key(body["id"]))]
    done = stream[-1]
    assert done.event == "done" and done.data["status"] == "succeeded"
    assert done.data["priority"] == priority  # the pushed body (Prefer: wait, webhooks) is the one a poll shows
    record = lifecycle.read(body["id"])
    assert record is not None and done.data == record.body()


def test_a_stop_request_ends_a_blocked_claim_at_once(running: tuple[WorkLoop, threading.Thread]) -> None:
    loop, thread = running
    began = time.monotonic()
    loop.request_stop()
    thread.join(BLOCK_S - 3)
    assert not thread.is_alive(), "the loop was still blocked in its claim"
    assert time.monotonic() - began < BLOCK_S - 3
