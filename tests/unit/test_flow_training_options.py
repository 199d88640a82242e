"""The training options of issue 13: EMA weights, the logit-normal time density, the per-step lr
schedules, bf16 / channels-last on a CPU (and the float32 fallback)."""

from __future__ import annotations

import math

import pytest
import torch

from models.flow import training
from models.flow.ema import EMA
from models.flow.objectives import logit_normal_pdf, sample_t
from models.flow.training import TrainConfig, lr_factor, train

# -- EMA -------------------------------------------------------------------------------------------


def _set(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        for b in model.buffers():
            if b.is_floating_point():
                b.fill_(value)


def test_ema_closed_form_without_warmup() -> None:
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    _set(live, 0.0)
    ema = EMA(live, 0.9, warmup=False)
    seq = [1.0, 2.0, 4.0]
    for v in seq:
        _set(live, v)
        ema.update(live)
    # e_k = 0.9 e_{k-1} + 0.1 p_k from e_0 = 0: 0.1 * (0.81 * 1 + 0.9 * 2 + 4)
    expected = 0.1 * (0.81 * 1 + 0.9 * 2 + 4)
    for t in ema.model.state_dict().values():
        if t.is_floating_point():
            torch.testing.assert_close(t, torch.full_like(t, expected), rtol=1e-6, atol=1e-7)
    # integer buffers are copied, the live model is untouched, the copy is frozen and in eval mode
    assert int(ema.model[1].num_batches_tracked) == int(live[1].num_batches_tracked)
    assert all(float(p.detach().flatten()[0]) == 4.0 for p in live.parameters())
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())


def test_ema_warmup_schedule() -> None:
    ema = EMA(torch.nn.Linear(1, 1), 0.999)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(90) == pytest.approx(91 / 100)
    assert ema.decay_at(10**6) == 0.999
    live = torch.nn.Linear(1, 1, bias=False)
    _set(live, 0.0)
    ema = EMA(live, 0.999)
    _set(live, 1.0)
    ema.update(live)  # d_1 = 2/11: e_1 = 9/11
    assert float(ema.model.weight) == pytest.approx(9 / 11)
    with pytest.raises(ValueError):
        EMA(live, 1.0)


def test_train_returns_the_ema_copy() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    base = TrainConfig(objective="class", epochs=2, batch_size=16, num_hiddens=4)
    plain = train(base, images, labels)
    ema = train(
        TrainConfig(objective="class", epochs=2, batch_size=16, num_hiddens=4, ema_decay=0.5, ema_warmup=False),
        images,
        labels,
    )
    assert plain.raw_model is None and ema.raw_model is not None
    # EMA does not change the optimisation: same losses, same trained weights
    assert ema.losses == plain.losses
    assert all(
        torch.equal(a, b)
        for a, b in zip(ema.raw_model.state_dict().values(), plain.model.state_dict().values(), strict=True)
    )
    # and the result is the average, not the last iterate
    assert not torch.equal(ema.model.head.weight, ema.raw_model.head.weight)
    assert not ema.model.training


# -- time density ----------------------------------------------------------------------------------


def test_uniform_density() -> None:
    t = sample_t(200_000, generator=torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0 and float(t.max()) < 1
    assert abs(float(t.mean()) - 0.5) < 0.005 and abs(float(t.var()) - 1 / 12) < 0.002


def test_logit_normal_density() -> None:
    loc, scale = 0.5, 0.8
    t = sample_t(
        200_000,
        density="logit_normal",
        loc=loc,
        scale=scale,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    assert float(t.min()) > 0 and float(t.max()) < 1
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.mean()) - loc) < 0.01 and abs(float(logit.std()) - scale) < 0.01
    # P(0.25 < t < 0.75) = Phi((logit(.75) - loc) / s) - Phi((logit(.25) - loc) / s)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    lg = math.log(3)
    p = phi((lg - loc) / scale) - phi((-lg - loc) / scale)
    assert abs(float(((t > 0.25) & (t < 0.75)).double().mean()) - p) < 0.005
    # the density integrates to 1 and peaks near sigmoid(loc) for a small scale
    grid = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    pdf = logit_normal_pdf(grid, loc, scale)
    assert float(torch.trapezoid(pdf, grid)) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        sample_t(3, density="cosmap", generator=torch.Generator())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sample_t(3, density="logit_normal", scale=0.0, generator=torch.Generator())


def test_training_uses_the_density(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    real = training.flow_matching_loss

    def spy(velocity, x_1, *, generator, t=None, x_0=None):
        seen.append(t)
        return real(velocity, x_1, generator=generator, t=t, x_0=x_0)

    monkeypatch.setattr(training, "flow_matching_loss", spy)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    train(TrainConfig(objective="time", epochs=1, batch_size=64, num_hiddens=4), images, labels)
    assert seen == [None]  # uniform: the loss draws t itself (the original random stream)
    seen.clear()
    train(
        TrainConfig(
            objective="time",
            epochs=1,
            batch_size=64,
            num_hiddens=4,
            time_density="logit_normal",
            t_loc=3.0,
            t_scale=0.1,
        ),
        images,
        labels,
    )
    assert seen[0] is not None and seen[0].shape == (64,)
    lo, hi = 1 / (1 + math.exp(-2.5)), 1 / (1 + math.exp(-3.5))  # sigmoid(3 -+ 5 * 0.1)
    assert lo < float(seen[0].min()) and float(seen[0].max()) < hi


# -- lr schedules ----------------------------------------------------------------------------------


def test_cosine_and_constant_schedules() -> None:
    kw = {"warmup_steps": 4, "min_lr_ratio": 0.1}
    assert [lr_factor(s, 20, scheduler="cosine", **kw) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(4, 20, scheduler="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(19, 20, scheduler="cosine", **kw) == pytest.approx(0.1)
    mid = 4 + (20 - 4 - 1) / 2
    assert lr_factor(int(mid), 20, scheduler="cosine", **kw) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * int(mid - 4) / 15))
    )
    assert [lr_factor(s, 20, scheduler="constant", warmup_steps=2) for s in (0, 1, 2, 19)] == [0.5, 1.0, 1.0, 1.0]
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    r = train(
        TrainConfig(
            objective="class", epochs=2, batch_size=16, num_hiddens=4, scheduler="cosine", lr=1e-2, min_lr_ratio=0.5
        ),
        images,
        labels,
    )
    assert [e.lr for e in r.epochs] == pytest.approx([1e-2 * (0.5 + 0.25 * (1 + math.cos(math.pi / 3))), 5e-3])


# -- CPU bf16 / channels-last ----------------------------------------------------------------------


def test_cpu_bf16_and_its_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    cfg = {"objective": "class", "epochs": 1, "batch_size": 16, "num_hiddens": 4}
    f32 = train(TrainConfig(**cfg), images, labels)  # type: ignore[arg-type]
    monkeypatch.setattr(training, "bf16_supported", lambda device: False)
    fallback = train(TrainConfig(**cfg, bf16=True, channels_last=True), images, labels)  # type: ignore[arg-type]
    # no native bf16: float32 arithmetic, so the same losses as the float32 run (layout aside)
    assert fallback.losses == pytest.approx(f32.losses, rel=1e-5)
    monkeypatch.setattr(training, "bf16_supported", lambda device: True)
    bf = train(TrainConfig(**cfg, bf16=True, channels_last=True), images, labels)  # type: ignore[arg-type]
    assert bf.losses != f32.losses and bf.losses == pytest.approx(f32.losses, rel=0.05)
    assert bf.model.conv_in[0][0].weight.dtype == torch.float32  # master weights stay float32
