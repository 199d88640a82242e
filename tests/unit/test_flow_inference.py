"""The inference fast path: BN folding is exact, bf16 stays close to float32, the bf16 probe falls back,
rows are independent, guidance matches the reference wrapper, and generate() accepts a FlowNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.flow.inference import (
    FlowNet,
    bf16_supported,
    fold_batchnorm,
    prepare_for_inference,
    resolve_dtype,
)
from models.flow.sampling import ClassifierFreeGuidance, generate
from models.flow.training import build_seeded_model
from models.flow.unet import FlowUNet, UNetConfig

NO_BF16 = lambda: {"avx512_bf16": False, "amx_bf16": False, "avx2": True}  # noqa: E731
HAS_AVX512_BF16 = lambda: {"avx512_bf16": True}  # noqa: E731
HAS_AMX = lambda: {"amx_bf16": True}  # noqa: E731


def _trained_like(conditioning: str, d: int = 8, seed: int = 0) -> FlowUNet:
    """A small network whose BatchNorms hold non-trivial running statistics and affine parameters
    (as after training), so that folding them is really tested."""
    model = build_seeded_model(UNetConfig(conditioning, d), seed)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def class_model() -> FlowUNet:
    return _trained_like("class", 8, 0)


@pytest.fixture(scope="module")
def time_model() -> FlowUNet:
    return _trained_like("time", 8, 1)


def _inputs(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    t = torch.rand(b, generator=g)
    c = F.one_hot(torch.randint(0, 10, (b,), generator=g), 10).float()
    c[::3] = 0  # some unconditional rows
    return x, t, c


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- the bf16 probe and the dtype rule ------------------------------------------------------------


def test_bf16_probe_reads_the_capabilities() -> None:
    assert bf16_supported("cpu", capabilities=HAS_AVX512_BF16)
    assert bf16_supported("cpu", capabilities=HAS_AMX)
    assert not bf16_supported("cpu", capabilities=NO_BF16)
    assert not bf16_supported("meta")


def test_auto_falls_back_to_float32_without_bf16(class_model: FlowUNet) -> None:
    assert resolve_dtype("auto", "cpu", capabilities=NO_BF16) == torch.float32
    assert resolve_dtype("auto", "cpu", capabilities=HAS_AVX512_BF16) == torch.bfloat16
    assert resolve_dtype("float32", "cpu", capabilities=HAS_AVX512_BF16) == torch.float32
    assert resolve_dtype("bfloat16", "cpu", capabilities=NO_BF16) == torch.bfloat16  # asked for explicitly
    with pytest.raises(ValueError):
        resolve_dtype("float16", "cpu")  # type: ignore[arg-type]
    net = prepare_for_inference(class_model, capabilities=NO_BF16)
    assert net.dtype == torch.float32
    x, t, c = _inputs(4)
    with torch.no_grad():
        ref = class_model(x, t, c)
    torch.testing.assert_close(net(x, t, c), ref, rtol=1e-4, atol=1e-4)  # the float32 path: same function
    assert prepare_for_inference(class_model, capabilities=HAS_AVX512_BF16).dtype == torch.bfloat16


# -- BN folding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditioning", ["none", "time", "class"])
def test_fold_batchnorm_is_the_same_function(conditioning: str) -> None:
    model = _trained_like(conditioning, 8, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    # conv_in 2, down1 3, down2 3, unflatten 1, up1 3, up2 3, conv_out 2
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 17
    x, t, c = _inputs(5, 3)
    with torch.no_grad():
        ref = model(x, t, c)
        out = folded(x, t, c)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched


# -- bf16 against float32 ----------------------------------------------------------------------------


def test_bf16_path_within_tolerance_of_float32(class_model: FlowUNet, time_model: FlowUNet) -> None:
    """bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %); through ~14 layers the output
    drifts by about 1 % of its range. Tolerance: 3 % of the output's largest magnitude."""
    x, t, c = _inputs(16, 4)
    for model, cc in ((class_model, c), (time_model, None)):
        f32 = prepare_for_inference(model, dtype="float32")
        bf = prepare_for_inference(model, dtype="bfloat16")
        a, b = f32(x, t, cc), bf(x, t, cc)
        assert a.dtype == b.dtype == torch.float32 and a.shape == (16, 1, 28, 28)
        assert _rel_err(b, a) < 0.03
        assert not torch.equal(a, b)  # it really ran in bf16
    g32 = prepare_for_inference(class_model, dtype="float32").guided(x, t, c, 3.0)
    gbf = prepare_for_inference(class_model, dtype="bfloat16").guided(x, t, c, 3.0)
    assert _rel_err(gbf, g32) < 0.05  # w = 3 amplifies v_c - v_u by 3


# -- rows are independent ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_per_row_t_and_c_match_separate_calls(class_model: FlowUNet, dtype: str) -> None:
    net = prepare_for_inference(class_model, dtype=dtype)
    x, t, c = _inputs(6, 5)
    batched = net(x, t, c)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1], c[i : i + 1]) for i in range(6)])
    tol = 1e-5 if dtype == "float32" else 0.02 * float(single.abs().max())
    torch.testing.assert_close(batched, single, rtol=0, atol=tol)
    # deterministic for a given batch
    assert torch.equal(net(x, t, c), batched)
    # a scalar t is every row's t
    torch.testing.assert_close(net(x, 0.25, c), net(x, torch.full((6,), 0.25), c), rtol=0, atol=0)


def test_time_model_rows_and_none_c(time_model: FlowUNet) -> None:
    net = prepare_for_inference(time_model, dtype="float32")
    x, t, _ = _inputs(3, 6)
    with torch.no_grad():
        ref = time_model(x, t)
    torch.testing.assert_close(net(x, t), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not class-conditioned"):
        net(x, t, torch.zeros(3, 10))
    with pytest.raises(ValueError, match="class-conditioned"):
        net.guided(x, t, torch.zeros(3, 10), 2.0)
    with pytest.raises(ValueError, match="rows"):
        net(x, t[:2])


def test_class_model_none_c_is_unconditional(class_model: FlowUNet) -> None:
    net = prepare_for_inference(class_model, dtype="float32")
    x, t, _ = _inputs(3, 7)
    torch.testing.assert_close(net(x, t), net(x, t, torch.zeros(3, 10)), rtol=0, atol=0)


# -- guidance --------------------------------------------------------------------------------------------


def test_guided_matches_the_reference_cfg(class_model: FlowUNet) -> None:
    x, t, c = _inputs(5, 8)
    net = prepare_for_inference(class_model, dtype="float32")
    with torch.no_grad():
        for w in (0.0, 1.0, 4.0):
            ref = ClassifierFreeGuidance(class_model, c, w)(x, t)
            torch.testing.assert_close(net.guided(x, t, c, w), ref, rtol=1e-4, atol=1e-4)
        # w = 1 is the conditional estimate, w = 0 the unconditional one
        torch.testing.assert_close(net.guided(x, t, c, 1.0), net(x, t, c), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.guided(x, t, c, 0.0), net(x, t, torch.zeros_like(c)), rtol=1e-5, atol=1e-5)


def test_guided_per_row_scale(class_model: FlowUNet) -> None:
    x, t, c = _inputs(4, 9)
    net = prepare_for_inference(class_model, dtype="float32")
    w = torch.tensor([0.0, 1.0, 2.5, 5.0])
    rows = net.guided(x, t, c, w)
    for i in range(4):
        torch.testing.assert_close(
            rows[i : i + 1], net.guided(x[i : i + 1], t[i : i + 1], c[i : i + 1], float(w[i])), rtol=1e-5, atol=1e-5
        )


def test_guided_runs_the_encoder_once(class_model: FlowUNet) -> None:
    net = prepare_for_inference(class_model, dtype="float32")
    seen: dict[str, list[int]] = {"enc": [], "dec": []}
    h1 = net.net.conv_in.register_forward_hook(lambda m, a, o: seen["enc"].append(a[0].shape[0]))
    h2 = net.net.up1.register_forward_hook(lambda m, a, o: seen["dec"].append(a[0].shape[0]))
    try:
        x, t, c = _inputs(3, 10)
        net.guided(x, t, c, 2.0)
    finally:
        h1.remove()
        h2.remove()
    assert seen == {"enc": [3], "dec": [6]}


# -- generate() with a FlowNet ------------------------------------------------------------------------


def test_generate_accepts_a_flownet(class_model: FlowUNet, time_model: FlowUNet) -> None:
    net = prepare_for_inference(class_model, dtype="float32")
    assert isinstance(net, FlowNet) and not net.training
    kw = {"n": 4, "digits": [0, 3, 3, 9], "steps": 4, "guidance": 2.0}
    ref = generate(class_model, generator=torch.Generator().manual_seed(1), **kw)  # type: ignore[arg-type]
    out = generate(net, generator=torch.Generator().manual_seed(1), **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert not net.training
    tnet = prepare_for_inference(time_model, dtype="bfloat16")
    a = generate(tnet, n=3, digits=None, steps=3, method="heun", generator=torch.Generator().manual_seed(2))
    b = generate(time_model, n=3, digits=None, steps=3, method="heun", generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 1, 28, 28) and float((a - b).abs().max()) < 0.05  # images in [0, 1]


def test_prepare_does_not_touch_the_model(class_model: FlowUNet) -> None:
    before = {k: v.clone() for k, v in class_model.state_dict().items()}
    prepare_for_inference(class_model, dtype="bfloat16", channels_last=True)
    assert all(torch.equal(v, before[k]) for k, v in class_model.state_dict().items())
    assert class_model.conv_in[0][0].weight.is_contiguous()
    with pytest.raises(ValueError, match="velocity"):
        prepare_for_inference(build_seeded_model(UNetConfig("none", 4), 0))


def test_warm_up_runs_each_entry_point(class_model: FlowUNet, time_model: FlowUNet) -> None:
    net = prepare_for_inference(class_model, dtype="float32")
    sizes: list[int] = []
    hook = net.net.up1.register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    try:
        assert net.warm_up((1, 3)) > 0
    finally:
        hook.remove()
    assert sizes == [2, 1, 6, 3]  # guided (2B decoder rows) then plain, for B = 1 and 3
    assert prepare_for_inference(time_model, dtype="float32").warm_up((2,)) > 0
