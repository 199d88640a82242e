"""The one denoising loop of the IF engine (stage I, and stage II with a conditioned noise predictor).

Notation as in ``models.diffusion.schedule``: ``x_t`` (B, C, H, W), ``eps``, ``v`` (learned-range variance
output), ``t``, ``t_prev``, ``x0_hat``.

Every task is a parameter of this loop (k-diffusion style: the loop only sees ``predict_noise(x_t, t)``):
sampling starts at index 0 from pure noise, SDEdit (Meng et al. 2022) starts at ``i_start`` from a noised
image, inpainting (Lugmayr et al. 2022, RePaint, eq. 8 without resampling) is a ``project`` hook, and
guidance, anagrams and hybrids are noise predictors (``models.diffusion.guidance``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from .schedule import StridedTimesteps, randn

__all__ = ["Callback", "NoisePrediction", "NoisePredictor", "Projection", "iterative_denoise"]


class NoisePrediction(NamedTuple):
    """A noise estimate: ``eps`` (B, C, H, W) and the learned-range variance ``v`` (B, C, H, W) or None."""

    eps: Tensor
    v: Tensor | None = None


class NoisePredictor(Protocol):
    """``predict_noise(x_t, t)``: x_t (B, C, H, W), t an int timestep -> NoisePrediction of the same shape."""

    def __call__(self, x_t: Tensor, t: int) -> NoisePrediction: ...


Projection = Callable[[Tensor, int], Tensor]
"""``project(x_{t_prev}, t_prev) -> x_{t_prev}``, applied after every step (t_prev = -1 after the last one)."""

Callback = Callable[[int, int, Tensor, Tensor], None]
"""``callback(step, total, x_t, x0_hat)`` after every step, step = 1..total: the sample after the step and the
step's estimate of the clean image (B, C, H, W) in about [-1, 1] (for previews); an exception it raises stops
the loop."""


def iterative_denoise(
    x_t: Tensor,
    timesteps: StridedTimesteps,
    predict_noise: NoisePredictor,
    *,
    i_start: int,
    project: Projection | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run the strided DDPM reverse process from ``timesteps[i_start]`` to a clean image.

    Step ``i`` goes from ``t = timesteps[i]`` to ``t_prev = timesteps.prev(i)`` with the rule of
    ``DDPMSchedule.step`` (DDPM eq. 7 on the strided pair, learned-range variance from the predictor's ``v``);
    the last step (to ``t_prev = -1``) returns ``x0_hat`` without noise. One ``predict_noise`` call per step.

    Args:
        x_t: (B, C, H, W) sample at timestep ``timesteps[i_start]`` (not modified).
        timesteps: strided timesteps with their schedule, e.g. 990, 960, ..., 0.
        predict_noise: ``(x_t, t) -> NoisePrediction``.
        i_start: index of ``x_t``'s timestep in ``timesteps``, in [0, len(timesteps)).
        project: hook applied to the sample after each step (inpainting).
        callback: ``callback(step, total, x_t, x0_hat)`` after each step; exceptions propagate (cancellation).
        generator: source of the per-step noise.

    Returns:
        (B, C, H, W) the denoised sample (``x0_hat`` of the last step, then ``project``-ed).
    """
    if not 0 <= i_start < len(timesteps):
        raise ValueError(f"i_start must be in [0, {len(timesteps)}), got {i_start}")
    schedule = timesteps.schedule
    total = len(timesteps) - i_start
    x = x_t
    for step, i in enumerate(range(i_start, len(timesteps)), start=1):
        t, t_prev = timesteps[i], timesteps.prev(i)
        eps, v = predict_noise(x, t)
        noise = randn(x, generator) if t_prev >= 0 else None
        x, x0_hat = schedule.step(x, eps, t, t_prev, v=v, noise=noise)
        if project is not None:
            x = project(x, t_prev)
        if callback is not None:
            callback(step, total, x, x0_hat)
    return x
