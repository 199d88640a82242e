"""What the in-process worker tests share: settings on the test Redis and checkpoints, the job lifecycle of a
fresh queue, the worker's environment (resident models, result folder), and a burst work loop that drains it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from core.lifecycle import Lifecycle, service_queue
from core.settings import Settings
from core.store import FolderStore
from workers import registry as model_registry
from workers.context import WorkerEnv
from workers.loop import WorkLoop
from workers.progress import PUBLISHER


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
def lifecycle(settings: Settings) -> Iterator[Lifecycle]:
    redis = Redis.from_url(settings.redis_url, socket_timeout=10)
    yield Lifecycle(
        redis,
        service_queue(settings.queue_name, redis),
        result_ttl_s=settings.result_ttl_s,
        tombstone_ttl_s=settings.tombstone_ttl_s,
    )
    PUBLISHER.flush()  # the process's event thread may still be sending this test's events on this client
    redis.close()


@pytest.fixture(scope="session")
def _registries() -> dict[tuple[str, str], model_registry.ModelRegistry]:
    return {}


@pytest.fixture
def env(
    settings: Settings, lifecycle: Lifecycle, _registries: dict[tuple[str, str], model_registry.ModelRegistry]
) -> WorkerEnv:
    """The environment of an in-process worker (its models loaded once per session and checkpoints)."""
    key = (str(settings.mnist_time_checkpoint), str(settings.mnist_class_checkpoint))
    if key not in _registries:
        _registries[key] = model_registry.build_registry(settings)
    return WorkerEnv(
        name=f"inproc-{uuid.uuid4().hex[:6]}",
        settings=settings,
        registry=_registries[key],
        lifecycle=lifecycle,
        files=FolderStore(settings.results_dir),
    )


@pytest.fixture
def work(env: WorkerEnv) -> Callable[[], None]:
    """Run the queue's jobs to their end in this process (a burst work loop, one job at a time)."""

    def drain() -> None:
        WorkLoop(env, max_inflight=1, heartbeat_s=1, dead_after_s=3, maintenance_s=60, shutdown_s=5).run(burst=True)

    return drain
