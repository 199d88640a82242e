"""Flow-matching and denoiser objectives; a tiny model overfits a 16-image batch; seeded training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.flow.objectives import (
    add_noise,
    denoiser_loss,
    drop_labels,
    flow_matching_loss,
    interpolate,
    target_velocity,
)
from models.flow.training import TrainConfig, build_seeded_model, train
from models.flow.unet import UNetConfig

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_path_endpoints(gen: torch.Generator) -> None:
    x0, x1 = torch.randn(2, 3, 4, 4, generator=gen), torch.rand(2, 3, 4, 4, generator=gen)
    assert torch.equal(interpolate(x0, x1, torch.zeros(2)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(2)), x1)
    torch.testing.assert_close(
        interpolate(x0, x1, torch.tensor([0.25, 0.5])),
        torch.stack([0.75 * x0[0] + 0.25 * x1[0], 0.5 * x0[1] + 0.5 * x1[1]]),
    )
    assert torch.equal(target_velocity(x0, x1), x1 - x0)


def test_loss_zero_for_true_velocity_on_one_image_dataset(gen: torch.Generator) -> None:
    # With a single data point x_1 the marginal velocity is u(x_t, t) = (x_1 - x_t) / (1 - t).
    x_1 = torch.rand(1, 1, 28, 28, generator=gen, dtype=torch.float64)
    batch = x_1.expand(64, -1, -1, -1)

    def true_velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (batch - x_t) / (1 - t).reshape(-1, 1, 1, 1)

    loss = flow_matching_loss(true_velocity, batch, generator=gen)
    assert loss.item() < 1e-20
    # and a wrong field is penalised
    assert flow_matching_loss(lambda x, t: torch.zeros_like(x), batch, generator=gen).item() > 0.5


def test_loss_is_seeded_and_pure(gen: torch.Generator) -> None:
    x = torch.rand(8, 1, 28, 28, generator=gen)
    before = x.clone()
    f = lambda x_t, t: x_t * t.reshape(-1, 1, 1, 1)  # noqa: E731
    a = flow_matching_loss(f, x, generator=torch.Generator().manual_seed(3))
    b = flow_matching_loss(f, x, generator=torch.Generator().manual_seed(3))
    assert a.item() == b.item() and torch.equal(x, before)


def test_drop_labels_rate(gen: torch.Generator) -> None:
    c = torch.nn.functional.one_hot(torch.randint(0, 10, (10000,), generator=gen), 10).float()
    d = drop_labels(c, 0.1, generator=gen)
    dropped = (d.sum(1) == 0).float().mean().item()
    assert 0.08 < dropped < 0.12
    assert torch.equal(d[d.sum(1) > 0], c[d.sum(1) > 0]) and c.sum() == 10000
    assert drop_labels(c, 0.0, generator=gen) is c


def test_denoiser_loss(gen: torch.Generator) -> None:
    x = torch.rand(4, 1, 28, 28, generator=gen)
    assert denoiser_loss(lambda y: x, x, 0.5, generator=gen).item() == 0.0
    # identity denoiser: loss = sigma^2 E z^2
    loss = denoiser_loss(lambda y: y, x[:1].expand(256, -1, -1, -1), 0.5, generator=gen).item()
    assert abs(loss - 0.25) < 0.01
    noisy = add_noise(x, 0.0, generator=gen)
    assert torch.equal(noisy, x)


def _stroke_digits(n: int = 16, size: int = 28) -> torch.Tensor:
    """(n, 1, size, size) digit-like images in [0, 1]: seeded rings and bars 3 px wide on a 0 background (about
    8 % ink, MNIST has 13 %). Uniform noise is no stand-in: it has no structure to memorise in 40 steps."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    out = torch.zeros(n, 1, size, size)
    for i in range(n):
        cy, cx = size / 2 + 4 * (torch.rand(2, generator=g) - 0.5)
        if i % 2 == 0:  # ring of radius 5..9: distance to the circle
            d = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() - (5 + 4 * torch.rand(1, generator=g))
        else:  # bar 18 px long at a random angle: distance to its axis, far outside its length
            a = torch.rand(1, generator=g) * torch.pi
            along = -(xx - cx) * torch.sin(a) + (yy - cy) * torch.cos(a)
            d = torch.where(along.abs() < 9, (xx - cx) * torch.cos(a) + (yy - cy) * torch.sin(a), size)
        out[i, 0] = (1.5 - d.abs()).clamp(0, 1)
    return out


def _sixteen_digits() -> torch.Tensor:
    """16 real digits from the shared MNIST folder when it is there, else 16 stroke digits."""
    from models.flow.data import load_all

    if not DATA.is_dir():
        return _stroke_digits()
    return load_all(DATA).images[::937][:16]


def test_tiny_model_overfits_16_images() -> None:
    x = _sixteen_digits()
    model = build_seeded_model(UNetConfig("none", 4), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        # same noise every step: pure memorisation of 16 (noisy -> clean) pairs
        loss = denoiser_loss(model, x, 0.5, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]  # real digits ~0.26 -> ~0.017; stroke digits ~0.21 -> ~0.015


def test_training_loop_is_reproducible() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)
    cfg = TrainConfig(objective="class", epochs=2, batch_size=16, num_hiddens=4)
    r1 = train(cfg, images, labels)
    r2 = train(cfg, images, labels)
    assert r1.losses == r2.losses and len(r1.losses) == 4
    assert all(
        torch.equal(a, b) for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values(), strict=True)
    )
    assert r1.train_config.gamma == pytest.approx(0.1**0.5)
    assert [e.lr for e in r1.epochs] == pytest.approx([1e-2, 1e-2 * 0.1**0.5])
    r3 = train(TrainConfig(objective="time", epochs=1, batch_size=16, num_hiddens=4, scheduler="none"), images, labels)
    assert r3.epochs[0].lr == pytest.approx(1e-3) and not r3.model.training


def test_defaults_follow_the_issue() -> None:
    d = TrainConfig(objective="denoise").resolved()
    assert (d.num_hiddens, d.lr, d.sigma) == (128, 1e-4, 0.5)
    f = TrainConfig(objective="class").resolved()
    assert (f.num_hiddens, f.batch_size, f.lr, f.p_uncond) == (64, 64, 1e-2, 0.1)
    assert f.gamma == pytest.approx(0.1 ** (1 / f.epochs))


def test_stroke_digits_look_like_digits() -> None:
    x = _stroke_digits()
    assert x.shape == (16, 1, 28, 28) and x.min() == 0 and x.max() == 1
    assert 0.04 < float(x.mean()) < 0.2  # ink fraction of the order of MNIST's 13 %
    assert float((x[:, :, :3]).abs().max()) == 0  # empty border rows, as MNIST's
    assert len({tuple(img.flatten().tolist()) for img in x}) == 16
