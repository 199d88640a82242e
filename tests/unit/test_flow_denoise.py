"""The one-step denoiser experiments: the sigma sweep and the average digit."""

from __future__ import annotations

import pytest
import torch

from models.flow.denoise import SWEEP_SIGMAS, average_digit, denoise_sweep, sweep_grid_rows
from models.flow.training import build_seeded_model
from models.flow.unet import UNetConfig


def test_sweep_shapes_and_shared_noise() -> None:
    model = build_seeded_model(UNetConfig("none", 4), seed=0)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    res = denoise_sweep(model, x, generator=torch.Generator().manual_seed(1))
    assert res.sigmas == SWEEP_SIGMAS == (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    assert res.noisy.shape == res.denoised.shape == (7, 3, 1, 28, 28) and len(res.mse) == 7
    assert torch.equal(res.noisy[0], x)  # sigma 0 is the clean digit
    z = (res.noisy[2] - x) / 0.4
    torch.testing.assert_close(res.noisy[6], x + z, rtol=1e-5, atol=1e-5)  # the same z for every sigma
    assert sweep_grid_rows(res).shape == (14 * 3, 1, 28, 28)
    assert model.training  # mode restored
    with pytest.raises(ValueError):
        denoise_sweep(build_seeded_model(UNetConfig("time", 4), 0), x, generator=torch.Generator())


def test_average_digit_of_a_constant_denoiser() -> None:
    model = build_seeded_model(UNetConfig("none", 4), seed=0).eval()
    with torch.no_grad():  # a head that ignores its input: output = bias = 0.25 everywhere
        model.head.weight.zero_()
        model.head.bias.fill_(0.25)
    out = average_digit(model, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, 28, 28) and torch.allclose(out, torch.full_like(out, 0.25))
