"""Shared fixtures: a real Redis for the session, small MNIST checkpoints, service stacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RedisServer, SeaweedServer, Stack

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A real S3 server (SeaweedFS) for the session, with one bucket; never skipped: without `weed` the tests
    that need it fail and say to run `make setup`."""
    try:
        server = SeaweedServer(data_dir=tmp_path_factory.mktemp("s3"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def mnist_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Small random-weight time- and class-conditioned checkpoints (D=8), written with the real saver."""
    import torch

    from models.flow.checkpoint import save_model
    from models.flow.unet import UNetConfig, build_model

    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for i, kind in enumerate(("time", "class")):
        torch.manual_seed(i)
        config = UNetConfig(conditioning=kind, num_hiddens=8)
        path = folder / f"mnist_{kind}_fm.safetensors"
        save_model(build_model(config).eval(), config, path)
        out[f"MNIST_{kind.upper()}_CHECKPOINT"] = str(path)
    return out


@pytest.fixture
def make_stack(redis_server: RedisServer, mnist_checkpoints: dict[str, str], tmp_path: Path):
    """Factory: make_stack(**env) -> a started API (workers are started by the test)."""
    stacks: list[Stack] = []

    def make(**env: str) -> Stack:
        folder = tmp_path / f"stack{len(stacks)}"
        folder.mkdir()
        stack = Stack(redis_server.url, {**mnist_checkpoints, **env}, folder)
        stacks.append(stack)
        return stack.start_api()

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack(make_stack) -> Stack:
    """An API plus one worker, on small MNIST checkpoints."""
    s = make_stack()
    s.start_worker()
    return s


@pytest.fixture(scope="session")
def tiny_if_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiny random-weight IF stage-I and stage-II pipeline directories, written by the project's builder;
    they load through the same `from_pretrained` path as the real DeepFloyd ids."""
    from models.diffusion.tiny import build_tiny_if, build_tiny_if_stage2

    root = tmp_path_factory.mktemp("tiny-if")
    return build_tiny_if(root / "stage1"), build_tiny_if_stage2(root / "stage2")


@pytest.fixture(scope="session")
def tiny_if(tiny_if_dirs: tuple[Path, Path]) -> dict[str, str]:
    """Worker settings that load the tiny IF pipelines."""
    return {"IF_ENABLED": "true", "IF_STAGE1_MODEL": str(tiny_if_dirs[0]), "IF_STAGE2_MODEL": str(tiny_if_dirs[1])}


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """The CI box has two shared cores; intra-op threads only add contention for tiny tensors."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
