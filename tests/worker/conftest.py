"""What the in-process worker tests share: settings on the test Redis and checkpoints, a queue whose worker
context is installed, and an RQ burst worker that drains it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue

from core.settings import Settings
from workers import registry as model_registry
from workers.worker import ResidentWorker


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Settings a test module changes (override this fixture in the module)."""
    return {}


@pytest.fixture
def settings(
    redis_server, mnist_checkpoints: dict[str, str], tmp_path: Path, settings_overrides: dict[str, Any]
) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        queue_name=f"inproc-{uuid.uuid4().hex[:8]}",
        results_dir=tmp_path,
        mnist_time_checkpoint=mnist_checkpoints["MNIST_TIME_CHECKPOINT"],
        mnist_class_checkpoint=mnist_checkpoints["MNIST_CLASS_CHECKPOINT"],
        if_enabled="false",
        device="cpu",
        **settings_overrides,
    )


@pytest.fixture
def queue(settings: Settings) -> Iterator[Queue]:
    model_registry.install(model_registry.build_registry(settings), settings)
    redis = Redis.from_url(settings.redis_url)
    yield Queue(settings.queue_name, connection=redis)
    redis.close()


@pytest.fixture
def work(queue: Queue, settings: Settings) -> Callable[[], None]:
    """Run the queue's jobs to their end in this process (an RQ burst worker)."""

    def drain() -> None:
        worker = ResidentWorker(
            [queue],
            connection=queue.connection,
            heartbeat_s=1,
            dead_after_s=3,
            name=f"inproc-{uuid.uuid4().hex[:6]}",
            default_result_ttl=settings.result_ttl_s,
        )
        worker.work(burst=True, with_scheduler=False)

    return drain
