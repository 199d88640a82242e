"""Training objectives: conditional flow matching and the one-step denoiser.

Notation (Lipman et al. 2023, "Flow Matching for Generative Modeling", eq. 20-23 with sigma_min = 0;
Liu et al. 2023, "rectified flow"): ``x_0 ~ N(0, I)`` noise, ``x_1`` data, t ~ U[0, 1],
``x_t = (1 - t) x_0 + t x_1``, target velocity ``x_1 - x_0``; t runs from 0 (noise) to 1 (data).

Training times t are drawn from a density on (0, 1) (:func:`sample_t`): uniform (Lipman et al.) or
logit-normal, ``t = sigmoid(m + s z)`` with ``z ~ N(0, 1)`` (Esser et al. 2024, "Scaling Rectified Flow
Transformers", sec. 3.1, eq. 19), which puts more weight on the middle of the path, where the
velocity is hardest to predict.

Every function takes a seeded ``torch.Generator`` (on the device of the data) and never touches the
global RNG or its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

#: ``velocity(x_t, t) -> v``: x_t (B, C, H, W), t (B,) in [0, 1], v like x_t.
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TimeDensity = Literal["uniform", "logit_normal"]
TIME_DENSITIES: tuple[str, ...] = ("uniform", "logit_normal")


def sample_t(
    n: int,
    *,
    density: TimeDensity = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw n training times t in (0, 1).

    density: ``"uniform"`` (t ~ U[0, 1]; ``loc`` and ``scale`` unused) or ``"logit_normal"``
    (``t = sigmoid(loc + scale * z)``, z ~ N(0, 1), density
    ``p(t) = exp(-(logit(t) - loc)^2 / (2 scale^2)) / (scale sqrt(2 pi) t (1 - t))``).
    Returns (n,) in ``dtype`` on ``device``.
    """
    if density == "uniform":
        return torch.rand((n,), generator=generator, device=device, dtype=dtype)
    if density == "logit_normal":
        if scale <= 0:
            raise ValueError(f"logit-normal scale must be > 0, got {scale}")
        z = torch.randn((n,), generator=generator, device=device, dtype=torch.float32)
        return torch.sigmoid(loc + scale * z).to(dtype)
    raise ValueError(f"unknown time density {density!r}; choose one of {TIME_DENSITIES}")


def logit_normal_pdf(t: torch.Tensor, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """The logit-normal density p(t) of :func:`sample_t` at t in (0, 1): same shape as t."""
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-((logit - loc) ** 2) / (2 * scale**2)) / (scale * math.sqrt(2 * math.pi) * t * (1 - t))


def interpolate(x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The linear path ``x_t = (1 - t) x_0 + t x_1``.

    x_0, x_1: (B, C, H, W); t: (B,) in [0, 1]. Returns (B, C, H, W).
    """
    tt = t.reshape(-1, *([1] * (x_1.dim() - 1))).to(x_1.dtype)
    return (1 - tt) * x_0 + tt * x_1


def target_velocity(x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
    """The conditional target velocity ``x_1 - x_0`` of the linear path: (B, C, H, W)."""
    return x_1 - x_0


def flow_matching_loss(
    velocity: VelocityFn,
    x_1: torch.Tensor,
    *,
    generator: torch.Generator,
    t: torch.Tensor | None = None,
    x_0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditional flow-matching loss ``E || v(x_t, t) - (x_1 - x_0) ||^2`` (mean over all elements).

    Args:
        velocity: the network as ``velocity(x_t, t)`` (wrap extra conditioning in a closure).
        x_1: (B, C, H, W) data in [0, 1].
        generator: draws ``x_0 ~ N(0, I)`` and ``t ~ U[0, 1]`` (when not given).
        t: optional (B,) times; x_0: optional (B, C, H, W) noise (for tests).
    Returns:
        scalar loss.
    """
    b = x_1.shape[0]
    if x_0 is None:
        x_0 = torch.randn(x_1.shape, generator=generator, device=x_1.device, dtype=x_1.dtype)
    if t is None:
        t = torch.rand((b,), generator=generator, device=x_1.device, dtype=x_1.dtype)
    x_t = interpolate(x_0, x_1, t)
    v = velocity(x_t, t)
    return torch.mean((v.float() - target_velocity(x_0, x_1).float()) ** 2)


def drop_labels(onehot: torch.Tensor, p_uncond: float, *, generator: torch.Generator) -> torch.Tensor:
    """Zero each row of a (B, K) one-hot class matrix with probability ``p_uncond`` (CFG training).

    Returns a new (B, K) tensor; the input is not modified.
    """
    if p_uncond <= 0:
        return onehot
    keep = torch.rand((onehot.shape[0], 1), generator=generator, device=onehot.device) >= p_uncond
    return onehot * keep.to(onehot.dtype)


def add_noise(x: torch.Tensor, sigma: float, *, generator: torch.Generator) -> torch.Tensor:
    """``x + sigma z`` with ``z ~ N(0, I)``: (B, C, H, W) -> (B, C, H, W) (not clipped)."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * z


def denoiser_loss(
    denoise: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigma: float,
    *,
    generator: torch.Generator,
    pure_noise: bool = False,
) -> torch.Tensor:
    """One-step denoiser L2 loss ``E || D(x + sigma z) - x ||^2`` (mean over elements).

    With ``pure_noise=True`` the input is ``z`` alone (the "average digit" experiment: the optimum is
    the mean of the training digits). x: (B, C, H, W) in [0, 1]. Returns a scalar.
    """
    if pure_noise:
        x_in = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        x_in = add_noise(x, sigma, generator=generator)
    return torch.mean((denoise(x_in).float() - x.float()) ** 2)
