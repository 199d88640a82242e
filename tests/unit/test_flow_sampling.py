"""Samplers against closed-form answers; guidance; the generate() contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.flow.grid import make_grid
from models.flow.sampling import (
    SOLVERS,
    ClassifierFreeGuidance,
    euler,
    generate,
    heun,
    midpoint,
    nfe,
    time_grid,
)
from models.flow.unet import FlowUNet, UNetConfig


def gaussian_velocity(mu: float, s: float):
    """Exact marginal velocity E[x_1 - x_0 | x_t] for x_0 ~ N(0, 1), x_1 ~ N(mu, s^2) (per element).

    Jointly Gaussian: v(x, t) = mu + Cov(x_1 - x_0, x_t) / Var(x_t) * (x - t mu), with
    Cov = t s^2 - (1 - t) and Var = (1 - t)^2 + t^2 s^2. The flow maps x_0 to mu + s x_0.
    """

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        var = (1 - tt) ** 2 + tt**2 * s**2
        return mu + (tt * s**2 - (1 - tt)) / var * (x - tt * mu)

    return v


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def class_model() -> FlowUNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return FlowUNet(UNetConfig("class", 4)).eval()


@pytest.fixture(scope="module")
def time_model() -> FlowUNet:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return FlowUNet(UNetConfig("time", 4)).eval()


@pytest.mark.parametrize("solver", [euler, heun, midpoint])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_exact_for_constant_velocity(solver, steps: int, gen: torch.Generator) -> None:
    x0 = torch.randn(4, 1, 5, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(1, 1, 5, 5, generator=gen, dtype=torch.float64)
    out = solver(lambda x, t: c.expand_as(x), x0, time_grid(steps).double())
    torch.testing.assert_close(out, x0 + c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", [heun, midpoint])
def test_second_order_exact_for_velocity_linear_in_t(solver, gen: torch.Generator) -> None:
    x0 = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    # dx/dt = 1 + 2t  ->  x(1) = x(0) + 2
    out = solver(lambda x, t: (1 + 2 * t)[:, None].expand_as(x), x0, time_grid(3).double())
    torch.testing.assert_close(out, x0 + 2, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "steps", "var_tol", "path_tol"),
    [("euler", 50, 0.01, 0.08), ("heun", 10, 0.004, 0.025), ("midpoint", 10, 0.004, 0.002)],
)
def test_gaussian_target_mean_and_variance(
    name: str, steps: int, var_tol: float, path_tol: float, gen: torch.Generator
) -> None:
    mu, s = 0.7, 0.3
    x0 = torch.randn(20000, 1, 2, 2, generator=gen, dtype=torch.float64)
    x1 = SOLVERS[name](gaussian_velocity(mu, s), x0, time_grid(steps).double())
    assert abs(x1.mean().item() - mu) < 0.01
    assert abs(x1.var().item() - s**2) < var_tol  # s^2 = 0.09
    # the exact flow is the affine map x_0 -> mu + s x_0 (removes the sampling error)
    assert (x1 - (mu + s * x0)).abs().max().item() < path_tol


def test_heun_beats_euler_at_equal_nfe(gen: torch.Generator) -> None:
    mu, s = 0.7, 0.3
    x0 = torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    exact = mu + s * x0
    e = (euler(gaussian_velocity(mu, s), x0, time_grid(20).double()) - exact).abs().max()
    h = (heun(gaussian_velocity(mu, s), x0, time_grid(10).double()) - exact).abs().max()
    assert nfe("euler", 20) == nfe("heun", 10) == 20
    assert h < e / 5


def test_guidance_scale_one_equals_conditional(class_model: FlowUNet, gen: torch.Generator) -> None:
    x = torch.randn(5, 1, 28, 28, generator=gen)
    t = torch.rand(5, generator=gen)
    c = F.one_hot(torch.tensor([0, 3, 3, 7, 9]), 10).float()
    with torch.no_grad():
        guided = ClassifierFreeGuidance(class_model, c, 1.0)(x, t)
        cond = class_model(x, t, c)
        uncond = class_model(x, t, torch.zeros_like(c))
        torch.testing.assert_close(guided, cond, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ClassifierFreeGuidance(class_model, c, 0.0)(x, t), uncond, rtol=1e-5, atol=1e-5)
        w3 = ClassifierFreeGuidance(class_model, c, 3.0)(x, t)
        torch.testing.assert_close(w3, uncond + 3 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_guidance_is_one_batched_forward(class_model: FlowUNet, gen: torch.Generator) -> None:
    calls: list[int] = []
    hook = class_model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        generate(class_model, n=3, digits=[1, 2, 3], steps=4, generator=gen)
        generate(class_model, n=3, digits=[1, 2, 3], steps=4, method="heun", generator=gen)
    finally:
        hook.remove()
    assert calls == [6] * (4 + 8)


def test_generate_is_seeded_and_bounded(class_model: FlowUNet, time_model: FlowUNet) -> None:
    a = generate(class_model, n=4, digits=[0, 1, 2, 3], steps=3, generator=torch.Generator().manual_seed(7))
    b = generate(class_model, n=4, digits=[0, 1, 2, 3], steps=3, generator=torch.Generator().manual_seed(7))
    c = generate(class_model, n=4, digits=[0, 1, 2, 3], steps=3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    t = generate(time_model, n=2, digits=None, steps=2, method="heun", generator=torch.Generator().manual_seed(7))
    assert t.shape == (2, 1, 28, 28)
    u = generate(class_model, n=2, digits=None, steps=2, generator=torch.Generator().manual_seed(7))
    assert u.shape == (2, 1, 28, 28)


def test_generate_callback_and_cancellation(time_model: FlowUNet) -> None:
    seen: list[tuple[int, int]] = []
    generate(
        time_model,
        n=1,
        digits=None,
        steps=5,
        generator=torch.Generator().manual_seed(0),
        callback=lambda i, total, *_: seen.append((i, total)),
    )
    assert seen == [(i, 5) for i in range(1, 6)]

    class Cancelled(Exception):
        pass

    def cancel(i: int, total: int, *_: torch.Tensor) -> None:
        if i == 2:
            raise Cancelled

    time_model.train()
    with pytest.raises(Cancelled):
        generate(time_model, n=1, digits=None, steps=5, generator=torch.Generator().manual_seed(0), callback=cancel)
    assert time_model.training  # mode restored even on abort
    time_model.eval()


def test_generate_validates(class_model: FlowUNet, time_model: FlowUNet) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="length"):
        generate(class_model, n=2, digits=[1], generator=g)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        generate(class_model, n=1, digits=[10], generator=g)
    with pytest.raises(ValueError, match="not class-conditioned"):
        generate(time_model, n=1, digits=[1], generator=g)
    with pytest.raises(ValueError, match="method"):
        generate(time_model, n=1, digits=None, method="rk45", generator=g)
    with pytest.raises(ValueError, match="denoiser"):
        generate(FlowUNet(UNetConfig("none", 4)), n=1, digits=None, generator=g)


def test_make_grid_row_major() -> None:
    imgs = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 1, 2, 3).clone()
    g = make_grid(imgs, ncols=3)
    assert g.shape == (1, 4, 9)
    assert g[0, 0, 0] == 0 and g[0, 0, 3] == 1 and g[0, 0, 6] == 2
    assert g[0, 2, 0] == 3 and g[0, 3, 5] == 4 and g[0, 2, 6:].abs().sum() == 0  # partial row zero-filled
    assert torch.equal(make_grid(imgs[:2], ncols=2), torch.cat([imgs[0], imgs[1]], dim=-1))
    assert math.isclose(float(make_grid(imgs, 10).sum()), float(imgs.sum()))
