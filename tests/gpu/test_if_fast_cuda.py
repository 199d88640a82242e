"""The IF fast path on CUDA with the tiny pipelines in float16: reduce-overhead (inductor kernels + one CUDA graph
per bucket) and default against the eager UNet, padding, determinism, stage II, and every attention kernel.
Skipped without CUDA; ``bench/gpu_check.sh`` runs it.

Tolerances (float16): one UNet call within 1e-2 relative L2 of the eager call (inductor keeps float32 inside
fused kernels, eager rounds after each op); a 10-step sample within 5e-2 mean absolute difference of the eager
sample (images in [-1, 1]; guidance 7 amplifies the call's differences). Within one bucket, real rows are
bit-identical whatever the padding rows hold, and a seeded sample is bit-identical from run to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.diffusion.fast import CudaGraph, FastOptions, FastUNet, accelerate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

BUCKETS = (2, 4, 8)
FAST = 100  # stride: 10 steps


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: Tensor, b: Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def inputs(n: int, seed: int = 0, *, channels: int = 3, size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    g = gen(seed)
    x = torch.randn(n, channels, size, size, generator=g).cuda().half()
    t = torch.randint(0, 1000, (n,), generator=g).cuda()
    return x, t, torch.randn(n, 77, 32, generator=g).cuda().half()


def call(unet, x: Tensor, t: Tensor, e: Tensor, **kw: Tensor) -> Tensor:
    with torch.inference_mode():
        return unet(x, t, encoder_hidden_states=e, return_dict=False, **kw)[0]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from models.diffusion.tiny import build_tiny_if, build_tiny_if_stage2

    root = tmp_path_factory.mktemp("tiny_if_fast_cuda")
    return build_tiny_if(root / "s1"), build_tiny_if_stage2(root / "s2")


@pytest.fixture(scope="module")
def graphed(tiny_dirs: tuple[Path, Path]):
    """Both tiny stages on CUDA through ``accelerate`` in reduce-overhead mode, and the eager UNets."""
    from models.diffusion import load_stage1, load_stage2

    s1 = load_stage1(tiny_dirs[0], device="cuda")
    s2 = load_stage2(tiny_dirs[1], device="cuda", stage1=s1)
    eager = (s1.unet, s2.unet)
    report = accelerate([s1, s2], FastOptions(compile="reduce-overhead", buckets=BUCKETS), warmup_timeout_s=600)
    yield s1, s2, eager, report
    torch._dynamo.reset()


def test_reduce_overhead_warms_up_and_captures_every_bucket(graphed) -> None:
    from torch._dynamo.utils import counters

    s1, s2, _, report = graphed
    assert report.active, report.reason
    for engine in (s1, s2):
        assert isinstance(engine.unet, FastUNet) and engine.unet.ready
        assert sorted(engine.unet._buckets) == list(BUCKETS)
        assert all(isinstance(b.graph, CudaGraph) for b in engine.unet._buckets.values())
    assert counters["inductor"]["cudagraph_skips"] == 0  # no graphs of inductor's own (we capture them)


def test_graph_calls_match_eager_and_padding_never_changes_real_rows(graphed) -> None:
    s1, _, (eager1, _), _ = graphed
    fast = s1.unet
    x, t, e = inputs(11)
    ref = call(eager1, x, t, e)
    for n in (1, 3, 8, 11):  # 11 = 8 + 3 (padded to 4)
        out = call(fast, x[:n], t[:n], e[:n])
        assert out.shape == (n, 6, 32, 32) and rel(out, ref[:n]) <= 1e-2, n
    alone = call(fast, x[:3], t[:3], e[:3])
    other = inputs(1, seed=5)
    mixed = call(fast, *(torch.cat([a[:3], b]) for a, b in zip((x, t, e), other, strict=True)))
    assert torch.equal(mixed[:3], alone)
    kept = alone.clone()
    call(fast, x[3:6], t[3:6], e[3:6])  # the same bucket again: earlier results are copies
    assert torch.equal(alone, kept)


def test_graph_sample_is_deterministic_and_close_to_eager(graphed) -> None:
    from models.diffusion import sample

    s1, _, (eager1, _), _ = graphed
    a = sample(s1, "a dog", generator=gen(), stride=FAST)
    assert torch.equal(a, sample(s1, "a dog", generator=gen(), stride=FAST))
    fast, s1.unet = s1.unet, eager1
    try:
        ref = sample(s1, "a dog", generator=gen(), stride=FAST)
    finally:
        s1.unet = fast
    assert torch.isfinite(a).all() and (a - ref).abs().mean().item() <= 5e-2


def test_stage2_graphs_match_eager(graphed) -> None:
    from models.diffusion import sample, upscale

    s1, s2, (_, eager2), _ = graphed
    x, t, e = inputs(3, channels=6, size=64)
    labels = torch.full((3,), 250, device="cuda")
    assert rel(call(s2.unet, x, t, e, class_labels=labels), call(eager2, x, t, e, class_labels=labels)) <= 1e-2
    low = sample(s1, "a dog", generator=gen(), stride=FAST)
    up = upscale(s2, low, "a dog", generator=gen(), steps=3)
    assert up.shape == (1, 3, 64, 64) and torch.isfinite(up).all()


def test_default_mode_matches_eager(tiny_dirs: tuple[Path, Path]) -> None:
    from models.diffusion import load_stage1

    unet = load_stage1(tiny_dirs[0], device="cuda").unet
    fast = FastUNet(unet, FastOptions(compile="default", buckets=(4,)))
    fast.warm_up()
    x, t, e = inputs(3, seed=2)
    assert rel(call(fast, x, t, e), call(unet, x, t, e)) <= 1e-2


@pytest.mark.parametrize("attention", ["flash", "efficient", "cudnn", "math"])
def test_each_attention_kernel_matches_auto(tiny_dirs: tuple[Path, Path], attention: str) -> None:
    from models.diffusion import load_stage1

    unet = load_stage1(tiny_dirs[0], device="cuda").unet
    x, t, e = inputs(4, seed=3)
    ref = call(unet, x, t, e)
    try:
        out = call(FastUNet(unet, FastOptions(attention=attention, channels_last=True)), x, t, e)  # type: ignore[arg-type]
    except RuntimeError as exc:
        if "No available kernel" in str(exc) or "No viable backend" in str(exc):
            pytest.skip(f"{attention} attention is not available for these shapes here: {str(exc).splitlines()[0]}")
        raise
    assert rel(out, ref) <= 1e-2
