"""Cross-request batching on the tiny IF pipelines and small MNIST models: every operation's request driven
together with the others (workers.batcher, one forward per step and network) against the same request alone.

Determinism, restated: a request driven alone gives the same numbers as before batching existed
(tests/unit/test_driver.py checks the loop exactly; here alone = ``runner=None``). A request that shared its
forwards with others sees other batch sizes, and CPU kernels may then sum in another order: its floats differ
by a few 1e-5 at most, and its PNG by at most one grey level on a tiny share of pixels (measured on this
machine: max |d| 3.8e-5 in [-1, 1], one pixel in 3,000 off by one level). The bounds below are what we promise.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from models import imageio
from models.diffusion import IFEngine, Stage2Engine, load_stage1, load_stage2, ops
from models.diffusion.views import get_view
from models.flow.checkpoint import load_model
from models.flow.sampling import generate
from workers.batcher import Batcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_ABS = 1e-4  # in the image range [-1, 1] ([0, 1] for MNIST)
MAX_GREY = 1  # PNG levels
MAX_SHARE = 0.01  # of pixels that may differ by MAX_GREY


@pytest.fixture(scope="module")
def engines(tiny_if_dirs: tuple[Path, Path]) -> tuple[IFEngine, Stage2Engine]:
    stage1 = load_stage1(tiny_if_dirs[0], device="cpu")
    return stage1, load_stage2(tiny_if_dirs[1], device="cpu", stage1=stage1)


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


Runner = Callable[..., None] | None


def mixed_requests(
    engines: tuple[IFEngine, Stage2Engine], ckpt: dict[str, str]
) -> dict[str, Callable[[Runner], Tensor]]:
    stage1, stage2 = engines
    img = torch.rand(1, 3, 40, 40, generator=g(0)) * 2 - 1
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., :20] = 1
    class_model, _ = load_model(ckpt["MNIST_CLASS_CHECKPOINT"])
    time_model, _ = load_model(ckpt["MNIST_TIME_CHECKPOINT"])
    views4 = [get_view(v) for v in ("identity", "rot90", "rot180", "rot270")]
    return {
        "sample": lambda r: ops.sample(stage1, "a red ball", generator=g(1), runner=r),
        "sdedit_10": lambda r: ops.sdedit(stage1, img, "a drawing", i_start=10, generator=g(2), runner=r),
        "sdedit_25": lambda r: ops.sdedit(stage1, img, "a photo", i_start=25, generator=g(3), runner=r),
        "inpaint": lambda r: ops.inpaint(stage1, img, mask, "a balloon", generator=g(4), runner=r),
        "anagram_2": lambda r: ops.anagram(
            stage1, ["a", "b"], [get_view("identity"), get_view("flip_vertical")], generator=g(5), runner=r
        ),
        "anagram_4": lambda r: ops.anagram(stage1, ["a", "b", "c", "d"], views4, generator=g(6), runner=r),
        "hybrid": lambda r: ops.hybrid(stage1, "a skull", "waterfalls", generator=g(7), runner=r),
        "one_step": lambda r: ops.denoise(stage1, img, 500, "one_step", generator=g(8), runner=r).denoised,
        "iterative": lambda r: ops.denoise(stage1, img, 690, "iterative", generator=g(9), runner=r).denoised,
        "upscale": lambda r: ops.upscale(stage2, img[..., :32, :32], "a ball", generator=g(10), steps=4, runner=r),
        "mnist_7": lambda r: (
            generate(class_model, n=3, digits=[7] * 3, steps=12, guidance=5.0, generator=g(11), runner=r) * 2 - 1
        ),
        "mnist_2_heun": lambda r: (
            generate(class_model, n=1, digits=[2], steps=5, guidance=1.5, method="heun", generator=g(12), runner=r) * 2
            - 1
        ),
        "mnist_any": lambda r: (
            generate(time_model, n=4, digits=None, steps=7, method="midpoint", generator=g(13), runner=r) * 2 - 1
        ),
    }


def run_together(jobs: dict[str, Callable[[Runner], Tensor]], batcher: Batcher) -> dict[str, Tensor | BaseException]:
    out: dict[str, Tensor | BaseException] = {}

    def run(name: str) -> None:
        try:
            out[name] = jobs[name](batcher.run)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            out[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def _png(x: Tensor) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(imageio.png_bytes(x[0].clamp(-1, 1), value_range=(-1, 1))))).astype(int)


def assert_within_bound(alone: Tensor, shared: Tensor, name: str) -> None:
    assert float((alone - shared).abs().max()) <= MAX_ABS, name
    diff = np.abs(_png(alone) - _png(shared))
    assert diff.max() <= MAX_GREY and (diff > 0).mean() <= MAX_SHARE, (name, diff.max(), (diff > 0).mean())


def test_every_request_of_a_mixed_batch_equals_its_result_alone_within_the_bound(engines, mnist_checkpoints) -> None:
    jobs = mixed_requests(engines, mnist_checkpoints)
    alone = {name: job(None) for name, job in jobs.items()}
    batcher = Batcher(max_rows=256).start()
    try:
        shared = run_together(jobs, batcher)
    finally:
        batcher.stop()
    for name in jobs:
        result = shared[name]
        assert isinstance(result, Tensor), (name, result)
        assert_within_bound(alone[name], result, name)
    # the requests shared forwards: far fewer forwards than request-steps
    assert batcher._driver.forwards < 0.5 * sum(34 if n in ("sample", "inpaint") else 10 for n in jobs)


def test_alone_through_the_batcher_is_the_same_bytes(engines, mnist_checkpoints) -> None:
    jobs = mixed_requests(engines, mnist_checkpoints)
    batcher = Batcher(max_rows=256).start()
    try:
        for name in ("anagram_4", "mnist_7"):
            assert torch.equal(jobs[name](None), jobs[name](batcher.run)), name
    finally:
        batcher.stop()


class Canceled(Exception):
    pass


def test_canceling_one_job_or_feeding_it_nans_leaves_the_others_results_unchanged(engines, mnist_checkpoints) -> None:
    stage1, _ = engines
    jobs = mixed_requests(engines, mnist_checkpoints)
    keep = ("sample", "anagram_2", "mnist_7", "hybrid")
    alone = {name: jobs[name](None) for name in keep}

    def cancel_at_5(step: int, total: int, *_: Tensor) -> None:
        if step == 5:
            raise Canceled

    bad = torch.full((1, 3, 32, 32), float("nan"))
    together: dict[str, Callable[[Runner], Tensor]] = {name: jobs[name] for name in keep}
    together["canceled"] = lambda r: ops.sample(stage1, "a dog", generator=g(20), callback=cancel_at_5, runner=r)
    together["nan_input"] = lambda r: ops.sdedit(stage1, bad, "x", i_start=5, generator=g(21), runner=r)
    batcher = Batcher(max_rows=256).start()
    try:
        out = run_together(together, batcher)
    finally:
        batcher.stop()
    assert isinstance(out["canceled"], Canceled), repr(out["canceled"])
    # NaN rows in a shared forward stay in their own rows: NaN in, NaN out, and the others are untouched
    assert isinstance(out["nan_input"], Tensor) and torch.isnan(out["nan_input"]).all()
    for name in keep:
        result = out[name]
        assert isinstance(result, Tensor), (name, result)
        assert_within_bound(alone[name], result, name)
