"""The IF fast path on the CPU with the tiny pipelines: eager modes, ``torch.compile`` (inductor, default mode)
against the eager UNet, the graph modes' static-buffer logic (emulated graphs), padding, the refusals, and the
warm-up fallback (in the library and in the worker).

Tolerances (float32, outputs of order 1): a compiled UNet call is within 1e-4 (max abs) of the eager one (seen:
about 3e-6); a 10-step guided ``sample`` is within 1e-3 (max abs) of the eager sample, in [-1, 1] (seen: about
1e-4; guidance 7 amplifies the call's differences). Within one
bucket, the real rows are bit-identical whatever the padding rows hold.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.diffusion import IFEngine, Stage2Engine, load_stage1, load_stage2, sample, upscale
from models.diffusion.fast import EagerGraph, FastOptions, FastPathRefused, FastUNet, accelerate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler: apt-get install g++ (make setup installs it)",
)

CALL_TOL = 1e-4
SAMPLE_TOL = 1e-3
FAST = 100  # stride: 10 steps


@pytest.fixture(scope="module")
def engines(tiny_if_dirs: tuple[Path, Path]) -> tuple[IFEngine, Stage2Engine]:
    s1 = load_stage1(tiny_if_dirs[0], device="cpu")
    return s1, load_stage2(tiny_if_dirs[1], device="cpu", stage1=s1)


@pytest.fixture(scope="module")
def compiled(engines: tuple[IFEngine, Stage2Engine]) -> FastUNet:
    """The tiny stage-I UNet compiled by inductor for one bucket of 4 rows (one compilation for the module)."""
    fast = FastUNet(engines[0].unet, FastOptions(compile="default", buckets=(4,)))
    fast.warm_up()
    return fast


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(n: int, seed: int = 0, *, channels: int = 3, size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """x (n, C, S, S), distinct timesteps per row, embeds (n, 77, 32)."""
    g = gen(seed)
    return (
        torch.randn(n, channels, size, size, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        torch.randn(n, 77, 32, generator=g),
    )


def call(unet, x: Tensor, t: Tensor, e: Tensor, **kw: Tensor) -> Tensor:
    return unet(x, t, encoder_hidden_states=e, return_dict=False, **kw)[0]


def max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


class Swap:
    """Put a UNet into an engine for the duration of a with-block."""

    def __init__(self, engine: IFEngine, unet) -> None:
        self.engine, self.unet, self.old = engine, unet, engine.unet

    def __enter__(self) -> IFEngine:
        self.engine.unet = self.unet
        return self.engine

    def __exit__(self, *exc: object) -> None:
        self.engine.unet = self.old


# --- eager modes ---------------------------------------------------------------------------------------------


def test_fast_unet_is_a_drop_in_for_the_unet(engines: tuple[IFEngine, Stage2Engine]) -> None:
    unet = engines[0].unet
    fast = FastUNet(unet, FastOptions(attention="math"))
    assert fast.dtype == unet.dtype and fast.device == unet.device and fast.config is unet.config
    assert [p.data_ptr() for p in fast.parameters()] == [p.data_ptr() for p in unet.parameters()]
    x, t, e = inputs(3)
    ref = call(unet, x, t, e)
    assert max_diff(fast(x, t, encoder_hidden_states=e).sample, ref) <= 1e-5
    assert max_diff(call(fast, x, 500, e), call(unet, x, torch.full((3,), 500), e)) <= 1e-5  # a scalar timestep
    with pytest.raises(ValueError, match=r"per-row values"):
        call(fast, x, torch.zeros(2, dtype=torch.long), e)


def test_channels_last_and_the_attention_kernels_match_eager(tiny_if_dirs: tuple[Path, Path]) -> None:
    unet = load_stage1(tiny_if_dirs[0], device="cpu").unet  # converted in place: a copy of its own
    x, t, e = inputs(3)
    ref = call(unet, x, t, e)
    for options in (FastOptions(attention="flash"), FastOptions(attention="math"), FastOptions(channels_last=True)):
        out = call(FastUNet(unet, options), x, t, e)
        assert out.is_contiguous() and max_diff(out, ref) <= 1e-5, options


# --- torch.compile (inductor) --------------------------------------------------------------------------------


@needs_compiler
def test_compiled_call_matches_eager_within_tolerance(compiled: FastUNet) -> None:
    eager = compiled.unet
    for n in (3, 4, 6):  # padded to 4; exactly 4; split into 4 + 2 (padded to 4)
        x, t, e = inputs(n, seed=n)
        out, ref = call(compiled, x, t, e), call(eager, x, t, e)
        assert out.shape == ref.shape == (n, 6, 32, 32)
        assert max_diff(out, ref) <= CALL_TOL * max(1.0, ref.abs().max().item())


@needs_compiler
def test_padding_rows_never_change_the_real_rows(compiled: FastUNet) -> None:
    x, t, e = inputs(3)
    alone = call(compiled, x, t, e)  # the 4th row repeats the 3rd
    other = inputs(1, seed=9)
    with_other = call(compiled, *(torch.cat([a, b]) for a, b in zip((x, t, e), other, strict=True)))
    assert torch.equal(with_other[:3], alone)


@needs_compiler
def test_compiled_sample_matches_the_eager_sample(engines: tuple[IFEngine, Stage2Engine], compiled: FastUNet) -> None:
    from torch._dynamo.utils import counters

    engine = engines[0]
    ref = sample(engine, "a dog", generator=gen(), stride=FAST)
    graphs = counters["stats"]["unique_graphs"]
    with Swap(engine, compiled):
        out = sample(engine, "a dog", generator=gen(), stride=FAST)  # the operations run in inference mode
    assert max_diff(out, ref) <= SAMPLE_TOL
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation after the warm-up


# --- the graph modes' buffers (CUDA graphs emulated) ----------------------------------------------------------


@pytest.fixture(scope="module")
def graphed(engines: tuple[IFEngine, Stage2Engine]):
    """Both tiny engines through ``accelerate`` in reduce-overhead mode with buckets 2 and 4, dynamo's eager backend
    (it traces, with no kernels to compile) and emulated graphs; yields (report, stage-I fast, stage-II fast, the
    eager results of a sample and an upscale taken before)."""
    s1, s2 = engines
    before = (s1.unet, s2.unet)
    low = sample(s1, "a dog", generator=gen(), stride=FAST)
    refs = low, upscale(s2, low, "a dog", generator=gen(), steps=4)
    options = FastOptions(compile="reduce-overhead", buckets=(2, 4), backend="eager")
    report = accelerate([s1, s2], options, warmup_timeout_s=600, graph_factory=EagerGraph)
    fasts = (s1.unet, s2.unet)
    s1.unet, s2.unet = before
    yield report, *fasts, refs
    torch._dynamo.reset()


def test_a_successful_warm_up_installs_the_fast_unets(graphed, engines: tuple[IFEngine, Stage2Engine]) -> None:
    report, f1, f2, (low, _) = graphed
    s1 = engines[0]
    assert report.active and len(report.per_unet_s) == 2 and report.reason is None
    assert report.describe()["buckets"] == [2, 4] and report.describe()["compile"] == "reduce-overhead"
    assert all(isinstance(f, FastUNet) and f.ready and sorted(f._buckets) == [2, 4] for f in (f1, f2))
    with Swap(s1, f1):
        assert max_diff(sample(s1, "a dog", generator=gen(), stride=FAST), low) <= 1e-5


def test_graph_buckets_pad_copy_and_return_fresh_rows(graphed) -> None:
    fast = graphed[1]
    x, t, e = inputs(7)
    ref = call(fast.unet, x, t, e)
    first = call(fast, x[:3], t[:3], e[:3])  # bucket 4
    kept = first.clone()
    for n in (1, 2, 3, 4, 7):  # 7 = 4 + 3 (padded to 4)
        out = call(fast, x[:n], t[:n], e[:n])
        assert max_diff(out, ref[:n]) <= 1e-5 and out.is_contiguous()
    assert torch.equal(first, kept)  # results are copies: later replays never overwrite them
    assert max_diff(call(fast, x[:3], t[:3], e[:3]), first) == 0
    assert torch.equal(fast._buckets[4].x[3], x[2])  # the padding row repeats the last real row


def test_stage2_runs_through_the_graph_buckets(graphed, engines: tuple[IFEngine, Stage2Engine]) -> None:
    s2 = engines[1]
    fast, (low, ref) = graphed[2], graphed[3]
    x, t, e = inputs(3, channels=6, size=64)
    labels = torch.full((3,), 250)
    out = call(fast, x, t, e, class_labels=labels)
    assert max_diff(out, call(s2.unet, x, t, e, class_labels=labels)) <= 1e-5
    with Swap(s2, fast):
        assert max_diff(upscale(s2, low, "a dog", generator=gen(), steps=4), ref) <= 1e-4


# --- refusals and the warm-up fallback -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_only_modes_are_refused_on_the_cpu(engines: tuple[IFEngine, Stage2Engine], mode: str) -> None:
    s1, s2 = engines
    before = (s1.unet, s2.unet)
    with pytest.raises(FastPathRefused, match="needs a CUDA device, but the UNet is on cpu"):
        FastUNet(s1.unet, FastOptions(compile=mode))  # type: ignore[arg-type]
    with pytest.raises(FastPathRefused, match="needs a CUDA device"):
        accelerate([s1, s2], FastOptions(compile=mode))  # type: ignore[arg-type]
    assert (s1.unet, s2.unet) == before


def _fast_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "models.diffusion.fast" and r.levelno >= logging.WARNING]


def test_warm_up_past_its_bound_falls_back_to_eager_with_one_line(
    engines: tuple[IFEngine, Stage2Engine], caplog: pytest.LogCaptureFixture
) -> None:
    s1, s2 = engines
    before = (s1.unet, s2.unet)
    ref = sample(s1, "a dog", generator=gen(), stride=FAST)
    options = FastOptions(compile="default", buckets=(2, 4), backend="eager")
    with caplog.at_level(logging.INFO, logger="models.diffusion.fast"):
        report = accelerate([s1, s2], options, warmup_timeout_s=1e-6)
    assert not report.active and "past its bound of 1e-06s" in (report.reason or "")
    assert (s1.unet, s2.unet) == before  # the very same eager UNets
    [line] = _fast_records(caplog)
    assert "abandoned" in line.getMessage() and "the UNets run eagerly" in line.getMessage()
    assert torch.equal(sample(s1, "a dog", generator=gen(), stride=FAST), ref)
    assert report.describe()["active"] is False and report.describe()["compile"] == "default"


def test_a_failing_warm_up_falls_back_to_eager(
    engines: tuple[IFEngine, Stage2Engine], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    s1, s2 = engines
    before = (s1.unet, s2.unet)
    calls: list[int] = []

    def broken(self: FastUNet, deadline: float | None = None) -> float:
        calls.append(1)
        if len(calls) == 2:  # stage I warmed up, stage II fails: both go back to eager
            raise RuntimeError("no kernels today")
        return 0.5

    monkeypatch.setattr(FastUNet, "warm_up", broken)
    with caplog.at_level(logging.INFO, logger="models.diffusion.fast"):
        report = accelerate([s1, s2], FastOptions(compile="default", channels_last=False), warmup_timeout_s=60)
    assert not report.active and report.reason == "warm-up failed: RuntimeError: no kernels today"
    assert report.per_unet_s == (0.5,)
    assert (s1.unet, s2.unet) == before
    assert len(_fast_records(caplog)) == 1


def test_a_wrapped_error_names_its_cause() -> None:
    from models.diffusion.fast import _describe

    try:
        try:
            raise ValueError("the root\nmore")
        except ValueError as inner:
            raise RuntimeError("backend='x' raised:") from inner
    except RuntimeError as exc:
        assert _describe(exc) == "RuntimeError: backend='x' raised: (caused by ValueError: the root)"


def test_accelerate_with_eager_options_needs_no_warm_up(engines: tuple[IFEngine, Stage2Engine]) -> None:
    s1, s2 = engines
    before = (s1.unet, s2.unet)
    try:
        report = accelerate([s1, s2], FastOptions(attention="math"))
        assert report.active and report.seconds == 0
        assert isinstance(s1.unet, FastUNet) and s1.unet.unet is before[0] and s2.unet.unet is before[1]
        off = accelerate([s1, s2], FastOptions())
        assert not off.active and (s1.unet, s2.unet) == before
    finally:
        s1.unet, s2.unet = before
