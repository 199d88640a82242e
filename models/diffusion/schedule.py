"""DDPM noise schedule and the strided reverse step used by DeepFloyd IF (stage I and stage II).

Notation (shared by every module in ``models.diffusion``):

- ``alphas_cumprod``: (T,) cumulative products of (1 - beta); ``abar_t = alphas_cumprod[t]``.
  A timestep ``t = -1`` means "clean" and has ``abar = 1``.
- ``x_t``: (B, C, H, W) noisy image at timestep ``t``; ``x_0`` a clean image in [-1, 1].
- ``eps``: (B, C, H, W) Gaussian noise (or the model's estimate of it).
- ``x0_hat``: (B, C, H, W) estimate of ``x_0`` from ``x_t`` and ``eps``.
- ``t`` the current timestep, ``t_prev < t`` the next one in a strided list (``-1`` after the last one).
- ``v``: (B, C, H, W) raw "learned range" variance output of the UNet, nominally in [-1, 1].

Formulas:

- forward process: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020, DDPM, eq. 4).
- ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM eq. 15), then clipped or dynamically
  thresholded (Saharia et al. 2022, Imagen, sec. 2.3) as the scheduler config says.
- strided posterior q(x_{t_prev} | x_t, x0_hat) with ``alpha = abar_t / abar_{t_prev}``, ``beta = 1 - alpha``
  (DDPM eq. 6-7, applied to the pair (t, t_prev) as in Nichol & Dhariwal 2021, sec. 4):
  ``mean = sqrt(abar_{t_prev}) beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_{t_prev}) / (1 - abar_t) x_t``,
  ``beta_tilde = (1 - abar_{t_prev}) / (1 - abar_t) beta``.
- learned-range variance (Nichol & Dhariwal 2021, Improved DDPM, eq. 15):
  ``log var = f log beta + (1 - f) log beta_tilde`` with ``f = (v + 1) / 2``; without ``v`` the variance is
  ``beta_tilde`` ("fixed small").

This is the same rule as diffusers' ``DDPMScheduler.step`` for a custom (strided) timestep list with
``variance_type="learned_range"``; a unit test checks the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, overload

import torch
from torch import Tensor

__all__ = [
    "DDPMSchedule",
    "StridedTimesteps",
    "cosine_alphas_cumprod",
    "forward",
    "randn",
    "strided_timesteps",
]


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, max_beta: float = 0.999) -> Tensor:
    """The "squaredcos_cap_v2" schedule of IF (Nichol & Dhariwal 2021, eq. 17, betas capped at ``max_beta``).

    Returns:
        alphas_cumprod: (T,) float32, decreasing from ~1 to ~0.
    """

    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)], dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn from ``generator`` on the generator's device.

    Drawing on the generator's device (then moving) makes a CPU generator give the same noise whatever the
    model's device. Returns a tensor with ``like``'s shape, dtype and device.
    """
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)


@dataclass(frozen=True)
class DDPMSchedule:
    """A discrete DDPM noise schedule plus the rule that clips ``x0_hat``.

    Attributes:
        alphas_cumprod: (T,) float32 on the CPU.
        thresholding: dynamic thresholding of ``x0_hat`` (Imagen sec. 2.3), as in IF's scheduler config.
        dynamic_thresholding_ratio: percentile of |x0_hat| used as the threshold s.
        sample_max_value: upper bound on s.
        clip_sample: clamp ``x0_hat`` to [-clip_sample_range, clip_sample_range] (used if not thresholding).
        clip_sample_range: see ``clip_sample``.
    """

    alphas_cumprod: Tensor
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    clip_sample: bool = False
    clip_sample_range: float = 1.0

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> DDPMSchedule:
        """Build from a diffusers ``DDPMScheduler`` (its ``alphas_cumprod`` and config)."""
        cfg: Mapping[str, Any] = scheduler.config
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"only epsilon prediction is supported, got {cfg.get('prediction_type')!r}")
        return cls(
            alphas_cumprod=scheduler.alphas_cumprod.detach().to("cpu", torch.float32).clone(),
            thresholding=bool(cfg.get("thresholding", False)),
            dynamic_thresholding_ratio=float(cfg.get("dynamic_thresholding_ratio", 0.995)),
            sample_max_value=float(cfg.get("sample_max_value", 1.0)),
            clip_sample=bool(cfg.get("clip_sample", False)),
            clip_sample_range=float(cfg.get("clip_sample_range", 1.0)),
        )

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def abar(self, t: int) -> float:
        """``abar_t`` as a Python float; 1.0 for ``t < 0`` (clean)."""
        if t < 0:
            return 1.0
        if t >= self.num_train_timesteps:
            raise ValueError(f"t must be < {self.num_train_timesteps}, got {t}")
        return float(self.alphas_cumprod[t])

    def add_noise(self, x_0: Tensor, t: int, eps: Tensor) -> Tensor:
        """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4); ``t = -1`` gives ``x_0``.

        Args:
            x_0: (B, C, H, W) clean image in [-1, 1].
            t: timestep in [-1, T).
            eps: (B, C, H, W) standard normal noise.
        """
        abar_t = self.abar(t)
        if abar_t == 1.0:
            return x_0.clone()
        return math.sqrt(abar_t) * x_0 + math.sqrt(1.0 - abar_t) * eps

    def predict_x0(self, x_t: Tensor, eps: Tensor, t: int) -> Tensor:
        """``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM eq. 15), then clipped/thresholded."""
        abar_t = self.abar(t)
        x0_hat = (x_t - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
        return self.clip_x0(x0_hat)

    def clip_x0(self, x0_hat: Tensor) -> Tensor:
        """Dynamic thresholding (Imagen sec. 2.3) or clamping of ``x0_hat`` (B, C, H, W), per the config."""
        if self.thresholding:
            flat = x0_hat.reshape(x0_hat.shape[0], -1).float()
            s = torch.quantile(flat.abs(), self.dynamic_thresholding_ratio, dim=1)
            s = s.clamp(min=1.0, max=self.sample_max_value)[:, None]
            return (torch.maximum(torch.minimum(flat, s), -s) / s).reshape(x0_hat.shape).to(x0_hat.dtype)
        if self.clip_sample:
            return x0_hat.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0_hat

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        t: int,
        t_prev: int,
        *,
        v: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One reverse step from ``t`` to ``t_prev`` (DDPM eq. 6-7 on the strided pair; variance per module doc).

        Args:
            x_t: (B, C, H, W) current sample.
            eps: (B, C, H, W) noise estimate.
            t: current timestep in [0, T).
            t_prev: next timestep, ``-1 <= t_prev < t`` (``-1``: return ``x0_hat``, no noise).
            v: (B, C, H, W) learned-range variance output, or None for the fixed-small variance.
            noise: (B, C, H, W) standard normal noise; required when ``t_prev >= 0``.

        Returns:
            (x_{t_prev}, x0_hat), both (B, C, H, W).
        """
        if not -1 <= t_prev < t:
            raise ValueError(f"need -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
        abar_t, abar_prev = self.abar(t), self.abar(t_prev)
        alpha = abar_t / abar_prev
        beta = 1.0 - alpha
        x0_hat = self.predict_x0(x_t, eps, t)
        mean = (math.sqrt(abar_prev) * beta / (1.0 - abar_t)) * x0_hat + (
            math.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar_t)
        ) * x_t
        if t_prev < 0:
            return mean, x0_hat
        if noise is None:
            raise ValueError("noise is required when t_prev >= 0")
        beta_tilde = max((1.0 - abar_prev) / (1.0 - abar_t) * beta, 1e-20)
        if v is None:
            std: Tensor | float = math.sqrt(beta_tilde)
        else:
            frac = (v + 1.0) / 2.0
            log_var = frac * math.log(beta) + (1.0 - frac) * math.log(beta_tilde)
            std = torch.exp(0.5 * log_var)
        return mean + std * noise, x0_hat


@dataclass(frozen=True)
class StridedTimesteps(Sequence[int]):
    """A decreasing list of timesteps ``t_0 > t_1 > ... > t_{n-1}`` over a schedule.

    Behaves as a ``Sequence[int]``; ``prev(i)`` is ``t_{i+1}`` or ``-1`` after the last entry, which is the
    convention of diffusers' ``DDPMScheduler.previous_timestep`` for custom timesteps.
    """

    schedule: DDPMSchedule
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        v = self.values
        if not v:
            raise ValueError("timesteps must not be empty")
        if any(a <= b for a, b in pairwise(v)):
            raise ValueError(f"timesteps must be strictly decreasing, got {v}")
        if v[-1] < 0 or v[0] >= self.schedule.num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {self.schedule.num_train_timesteps}), got {v}")

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[int, ...]: ...
    def __getitem__(self, i: int | slice) -> int | tuple[int, ...]:
        return self.values[i]

    def __len__(self) -> int:
        return len(self.values)

    def prev(self, i: int) -> int:
        """``t_prev`` for index ``i``: the next entry, or -1 (clean) after the last one."""
        return self.values[i + 1] if i + 1 < len(self.values) else -1


def strided_timesteps(schedule: DDPMSchedule, stride: int = 30, *, start: int | None = None) -> StridedTimesteps:
    """``start, start - stride, ..., 0``; ``start`` defaults to the largest multiple of ``stride`` below T.

    With T = 1000 and stride 30 this is 990, 960, ..., 30, 0 (34 entries). ``start = (n - 1) * (T // n)`` gives
    the n "leading" timesteps of ``DDPMScheduler.set_timesteps(n)``.
    """
    T = schedule.num_train_timesteps
    if not 1 <= stride <= T:
        raise ValueError(f"stride must be in [1, {T}], got {stride}")
    if start is None:
        start = (T - 1) // stride * stride
    if start % stride or not 0 <= start < T:
        raise ValueError(f"start must be a multiple of stride in [0, {T}), got {start}")
    return StridedTimesteps(schedule, tuple(range(start, -1, -stride)))


def forward(x_0: Tensor, t: int, schedule: DDPMSchedule, *, generator: torch.Generator | None) -> Tensor:
    """Noise a clean image to timestep ``t`` (DDPM eq. 4) with noise from ``generator``.

    Args:
        x_0: (B, C, H, W) in [-1, 1].
        t: timestep in [-1, T); -1 returns a copy of ``x_0``.
    Returns:
        x_t: (B, C, H, W).
    """
    if t < 0:
        return x_0.clone()
    return schedule.add_noise(x_0, t, randn(x_0, generator))
