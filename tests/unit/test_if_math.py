"""Closed-form checks of the IF engine's math with analytic noise predictors (no network weights)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models.diffusion.filters import GaussianBlur, gaussian_blur, gaussian_kernel1d, high_pass
from models.diffusion.guidance import Anagram, ClassifierFree, Hybrid, cfg_combine
from models.diffusion.loop import NoisePrediction, iterative_denoise
from models.diffusion.schedule import (
    DDPMSchedule,
    StridedTimesteps,
    cosine_alphas_cumprod,
    forward,
    strided_timesteps,
)
from models.diffusion.views import VIEWS, Identity, PatchPermute, Rotate, get_view

# The real IF-I-XL rule: cosine schedule, dynamic thresholding at the 95th percentile, s <= 1.5.
IF_SCHEDULE = DDPMSchedule(
    cosine_alphas_cumprod(1000),
    thresholding=True,
    dynamic_thresholding_ratio=0.95,
    sample_max_value=1.5,
    clip_sample=True,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(seed: int = 0, shape: tuple[int, ...] = (2, 3, 8, 8)) -> Tensor:
    return torch.rand(shape, generator=gen(seed)) * 1.8 - 0.9


def oracle(x0: Tensor, schedule: DDPMSchedule, v: float | None = None):
    """The exact noise of a one-image data distribution: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    def predict(x_t: Tensor, t: int) -> NoisePrediction:
        abar = schedule.abar(t)
        eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        return NoisePrediction(eps, None if v is None else torch.full_like(x_t, v))

    return predict


class CountingDenoiser:
    """Analytic conditional denoiser: eps = a(embeds) x + b(embeds) sin(x (1 + t / 1000)) with each row's own t,
    v = tanh of the mean embedding."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: Tensor, t: Tensor | int, embeds: Tensor) -> NoisePrediction:
        self.calls.append(x.shape[0])
        if isinstance(t, int):  # called directly by a test
            t = torch.full((x.shape[0],), t)
        assert t.shape == (x.shape[0],) and t.dtype == torch.long  # one timestep per row
        a = embeds[:, 0, 0].view(-1, 1, 1, 1)
        b = embeds[:, 0, 1].view(-1, 1, 1, 1)
        eps = a * x + b * torch.sin(x * (1 + t.view(-1, 1, 1, 1) / 1000))
        v = torch.tanh(embeds.mean(dim=(1, 2))).view(-1, 1, 1, 1) * torch.cos(x)
        return NoisePrediction(eps, v)


def embeds(seed: int, n: int = 1) -> Tensor:
    return torch.randn(n, 4, 5, generator=gen(seed))


# --- schedule and loop ---------------------------------------------------------------------------------


def test_default_strided_timesteps_are_990_to_0_by_30() -> None:
    ts = strided_timesteps(IF_SCHEDULE, 30)
    assert list(ts) == list(range(990, -1, -30)) and len(ts) == 34
    assert ts.prev(0) == 960 and ts.prev(len(ts) - 1) == -1
    assert list(strided_timesteps(IF_SCHEDULE, 20, start=980))[:2] == [980, 960]
    with pytest.raises(ValueError):
        strided_timesteps(IF_SCHEDULE, 0)
    with pytest.raises(ValueError):
        StridedTimesteps(IF_SCHEDULE, (10, 20))


def test_cosine_schedule_matches_diffusers() -> None:
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    torch.testing.assert_close(cosine_alphas_cumprod(1000), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("i_start", [0, 5, 20, 33])
@pytest.mark.parametrize("v", [None, -1.0, 0.3, 1.0])
def test_oracle_predictor_recovers_the_image_from_any_start(i_start: int, v: float | None) -> None:
    x0 = image(1)
    ts = strided_timesteps(IF_SCHEDULE, 30)
    x_t = forward(x0, ts[i_start], IF_SCHEDULE, generator=gen(2))
    out = iterative_denoise(x_t, ts, oracle(x0, IF_SCHEDULE, v), i_start=i_start, generator=gen(3))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_loop_rejects_bad_start_and_does_not_modify_input() -> None:
    ts = strided_timesteps(IF_SCHEDULE, 100)
    x0 = image(0)
    x_t = x0.clone()
    with pytest.raises(ValueError):
        iterative_denoise(x_t, ts, oracle(x0, IF_SCHEDULE), i_start=len(ts))
    iterative_denoise(x_t, ts, oracle(x0, IF_SCHEDULE), i_start=0, generator=gen())
    assert torch.equal(x_t, x0)


def test_step_rule_agrees_with_diffusers_ddpm_scheduler() -> None:
    """Same model outputs and same generator: our loop equals DDPMScheduler.step over the strided list."""
    from diffusers import DDPMScheduler

    from models.diffusion.tiny import IF_I_SCHEDULER_CONFIG

    scheduler = DDPMScheduler.from_config(IF_I_SCHEDULER_CONFIG)
    schedule = DDPMSchedule.from_scheduler(scheduler)
    ts = strided_timesteps(schedule, 30)
    scheduler.set_timesteps(timesteps=list(ts))

    def model(x: Tensor, t: int) -> NoisePrediction:  # large outputs exercise dynamic thresholding
        return NoisePrediction(1.7 * torch.sin(3 * x + t / 100), torch.tanh(x) * 1.2)

    x_T = torch.randn(2, 3, 8, 8, generator=gen(5))
    ours = iterative_denoise(x_T, ts, model, i_start=0, generator=gen(6))
    g, x = gen(6), x_T
    for t in scheduler.timesteps:
        eps, v = model(x, int(t))
        x = scheduler.step(torch.cat([eps, v], dim=1), t, x, generator=g, return_dict=False)[0]
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=1e-5)


def test_single_step_matches_ddpm_posterior_without_model_variance() -> None:
    schedule = DDPMSchedule(cosine_alphas_cumprod(1000))
    x_t, eps, noise = image(1), image(2), image(3)
    out, x0_hat = schedule.step(x_t, eps, 500, 470, noise=noise)
    a, ap = schedule.abar(500), schedule.abar(470)
    beta = 1 - a / ap
    expected_x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
    mean = math.sqrt(ap) * beta / (1 - a) * expected_x0 + math.sqrt(a / ap) * (1 - ap) / (1 - a) * x_t
    torch.testing.assert_close(x0_hat, expected_x0)
    torch.testing.assert_close(out, mean + math.sqrt((1 - ap) / (1 - a) * beta) * noise)


def test_loop_is_deterministic_for_a_seed_and_calls_back_every_step() -> None:
    x0 = image(0)
    ts = strided_timesteps(IF_SCHEDULE, 100)
    seen: list[tuple[int, int]] = []

    def model(x: Tensor, t: int) -> NoisePrediction:
        return NoisePrediction(torch.tanh(x), None)

    a = iterative_denoise(x0, ts, model, i_start=3, generator=gen(7), callback=lambda s, n, *_: seen.append((s, n)))
    b = iterative_denoise(x0, ts, model, i_start=3, generator=gen(7))
    c = iterative_denoise(x0, ts, model, i_start=3, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert seen == [(i, len(ts) - 3) for i in range(1, len(ts) - 2)]


def test_callback_exception_stops_the_loop() -> None:
    class Cancelled(Exception):
        pass

    calls = []

    def cancel(step: int, total: int, *_: Tensor) -> None:
        if step == 2:
            raise Cancelled

    def model(x: Tensor, t: int) -> NoisePrediction:
        calls.append(t)
        return NoisePrediction(torch.zeros_like(x))

    with pytest.raises(Cancelled):
        iterative_denoise(
            image(0), strided_timesteps(IF_SCHEDULE, 100), model, i_start=0, callback=cancel, generator=gen()
        )
    assert len(calls) == 2


def test_inpainting_projection_keeps_known_pixels() -> None:
    x0 = image(0)
    mask = (torch.rand(2, 1, 8, 8, generator=gen(1)) > 0.5).float()
    ts = strided_timesteps(IF_SCHEDULE, 30)
    g = gen(2)

    def project(x: Tensor, t_prev: int) -> Tensor:
        return mask * x + (1 - mask) * forward(x0, t_prev, IF_SCHEDULE, generator=g)

    def model(x: Tensor, t: int) -> NoisePrediction:
        return NoisePrediction(torch.sin(5 * x), torch.cos(x))

    out = iterative_denoise(torch.randn(x0.shape, generator=gen(3)), ts, model, i_start=0, project=project, generator=g)
    keep = mask.expand_as(x0) == 0
    assert torch.equal(out[keep], x0[keep])
    assert not torch.allclose(out[~keep], x0[~keep])


# --- views --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_inverse_view_undoes_view(name: str) -> None:
    view = get_view(name)
    x = torch.randn(2, 3, 8, 8, generator=gen(0))
    torch.testing.assert_close(view.inverse_view(view.view(x)), x, rtol=0, atol=0)
    torch.testing.assert_close(view.view(view.inverse_view(x)), x, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_view_is_a_signed_permutation_so_preserves_standard_normal(name: str) -> None:
    """The view's matrix has exactly one +-1 per row and column: orthogonal, so N(0, I) maps to N(0, I)."""
    view = get_view(name)
    n = 1 * 8 * 8
    basis = torch.eye(n).view(n, 1, 8, 8)
    M = view.view(basis).reshape(n, n)
    assert torch.equal(M.abs().sum(0), torch.ones(n)) and torch.equal(M.abs().sum(1), torch.ones(n))
    assert set(M.unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(M @ M.T, torch.eye(n))


def test_views_do_what_their_names_say() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(get_view("flip_vertical").view(x)[0, 0, 0], x[0, 0, -1])
    assert torch.equal(get_view("flip_horizontal").view(x)[0, 0, :, 0], x[0, 0, :, -1])
    assert torch.equal(get_view("rot180").view(x), get_view("rot90").view(get_view("rot90").view(x)))
    assert torch.equal(get_view("rot270").view(get_view("rot90").view(x)), x)
    assert torch.equal(get_view("negate").view(x), -x)
    jig = get_view("jigsaw").view(torch.arange(64.0).view(1, 1, 8, 8))
    assert not torch.equal(jig, torch.arange(64.0).view(1, 1, 8, 8))
    assert torch.equal(jig.sort(dim=-1).values.flatten().sort().values, torch.arange(64.0))


def test_view_errors() -> None:
    with pytest.raises(ValueError, match=r"valid views: .*flip_vertical"):
        get_view("sideways")
    with pytest.raises(ValueError):
        Rotate(1).view(torch.zeros(1, 3, 4, 6))
    with pytest.raises(ValueError):
        PatchPermute(grid=3).view(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError):
        PatchPermute(grid=2, permutation=[0, 0, 1, 2])


def test_negated_view_keeps_variance_sign() -> None:
    v = torch.rand(1, 3, 4, 4, generator=gen(0))
    assert torch.equal(get_view("negate").inverse_view_variance(v), v)
    assert torch.equal(get_view("rot90").inverse_view_variance(v), get_view("rot90").inverse_view(v))


# --- guidance strategies ------------------------------------------------------------------------------


def test_cfg_at_scale_one_is_the_conditional_estimate() -> None:
    model, x = CountingDenoiser(), image(0)
    cond, uncond = embeds(1), embeds(2)
    guided = ClassifierFree(model, cond, uncond, 1.0)(x, 500)
    direct = model(x, 500, cond.expand(2, -1, -1))
    torch.testing.assert_close(guided.eps, direct.eps)
    torch.testing.assert_close(guided.v, direct.v)  # conditional variance


def test_cfg_formula_and_one_batched_call() -> None:
    model, x = CountingDenoiser(), image(0)
    cond, uncond = embeds(1), embeds(2)
    guided = ClassifierFree(model, cond, uncond, 7.0)(x, 300)
    assert model.calls == [4]
    e_c = model(x, 300, cond.expand(2, -1, -1)).eps
    e_u = model(x, 300, uncond.expand(2, -1, -1)).eps
    torch.testing.assert_close(guided.eps, e_u + 7.0 * (e_c - e_u))
    torch.testing.assert_close(cfg_combine(e_u, e_c, 0.0), e_u)


def test_anagram_with_identity_views_equals_cfg() -> None:
    model, x = CountingDenoiser(), image(0)
    cond, uncond = embeds(1), embeds(2)
    cfg = ClassifierFree(model, cond, uncond, 5.0)(x, 400)
    for n in (1, 3):
        ana = Anagram(model, [Identity()] * n, [cond] * n, uncond, 5.0)(x, 400)
        torch.testing.assert_close(ana.eps, cfg.eps)
        torch.testing.assert_close(ana.v, cfg.v)


def test_anagram_averages_inverse_viewed_estimates_in_one_call() -> None:
    model, x = CountingDenoiser(), image(0)
    views = [get_view("identity"), get_view("rot90"), get_view("negate")]
    conds = [embeds(1), embeds(3), embeds(4)]
    uncond = embeds(2)
    model.calls.clear()
    out = Anagram(model, views, conds, uncond, 3.0)(x, 250)
    assert model.calls == [2 * 3 * 2]
    expected_eps, expected_v = [], []
    for view, c in zip(views, conds, strict=True):
        one = ClassifierFree(model, c, uncond, 3.0)(view.view(x), 250)
        expected_eps.append(view.inverse_view(one.eps))
        expected_v.append(view.inverse_view_variance(one.v))
    torch.testing.assert_close(out.eps, torch.stack(expected_eps).mean(0))
    torch.testing.assert_close(out.v, torch.stack(expected_v).mean(0))


def test_hybrid_is_low_pass_of_a_plus_high_pass_of_b_in_one_call() -> None:
    model, x = CountingDenoiser(), torch.randn(1, 3, 16, 16, generator=gen(0))
    a, b, uncond = embeds(1), embeds(3), embeds(2)
    blur = GaussianBlur(7, 2.0)
    out = Hybrid(model, blur, [a, b], uncond, 4.0)(x, 600)
    assert model.calls == [3]
    ea = ClassifierFree(model, a, uncond, 4.0)(x, 600)
    eb = ClassifierFree(model, b, uncond, 4.0)(x, 600)
    torch.testing.assert_close(out.eps, blur(ea.eps) + high_pass(eb.eps, blur))
    torch.testing.assert_close(out.v, (ea.v + eb.v) / 2)


def test_low_pass_plus_high_pass_reconstructs() -> None:
    x = torch.randn(2, 3, 64, 64, generator=gen(0))
    blur = GaussianBlur()  # IF default: kernel 33, sigma 2
    torch.testing.assert_close(blur(x) + high_pass(x, blur), x)
    small = torch.randn(1, 3, 8, 8, generator=gen(1))  # too small to reflect-pad 16: replicate padding
    torch.testing.assert_close(blur(small) + high_pass(small, blur), small)


def test_gaussian_kernel_and_blur_facts() -> None:
    k = gaussian_kernel1d(33, 2.0)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0))
    assert torch.equal(k, k.flip(0)) and int(k.argmax()) == 16
    torch.testing.assert_close(k[17] / k[16], torch.tensor(math.exp(-1 / 8)))
    const = torch.full((1, 3, 16, 16), 0.25)
    torch.testing.assert_close(gaussian_blur(const, 5, 1.0), const)
    with pytest.raises(ValueError):
        GaussianBlur(4, 1.0)
    with pytest.raises(ValueError):
        GaussianBlur(5, 0.0)
