"""The one denoising loop of the IF engine (stage I, and stage II with a conditioned noise predictor).

Notation as in ``models.diffusion.schedule``: ``x_t`` (B, C, H, W), ``eps``, ``v`` (learned-range variance
output), ``t``, ``t_prev``, ``x0_hat``.

Every task is a parameter of this loop (k-diffusion style: the loop only sees ``predict_noise(x_t, t)``):
sampling starts at index 0 from pure noise, SDEdit (Meng et al. 2022) starts at ``i_start`` from a noised
image, inpainting (Lugmayr et al. 2022, RePaint, eq. 8 without resampling) is a ``project`` hook, and
guidance, anagrams and hybrids are noise predictors (``models.diffusion.guidance``).

The loop is a resumable state, ``DenoiseRequest``: one ``advance`` per step, driven by the step driver
(``models.driver``), alone (``iterative_denoise`` without a runner) or batched with other requests that use
the same network (a worker's batcher). Both paths run the same arithmetic in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from ..driver import Runner, drive
from .schedule import StridedTimesteps, randn

__all__ = ["Callback", "DenoiseRequest", "NoisePrediction", "NoisePredictor", "Projection", "iterative_denoise"]


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


class _Opaque:
    """A plain ``predict_noise(x_t, t)`` as a one-request network: it never shares a forward with another
    request (its rows would not carry their own timesteps)."""

    def __init__(self, predict: NoisePredictor) -> None:
        self.denoiser = self
        self._predict = predict
        self._t = 0

    def inputs(self, x_t: Tensor, t: int) -> dict[str, Tensor]:
        self._t = t
        return {"x_t": x_t}

    def __call__(self, x_t: Tensor) -> NoisePrediction:
        return self._predict(x_t, self._t)

    def combine(self, output: NoisePrediction) -> NoisePrediction:
        return output


def _guide(predict_noise: Any) -> Any:
    """The strategy in its two halves (``inputs``/``combine`` around its ``denoiser``), or a plain predictor
    wrapped as one."""
    if all(hasattr(predict_noise, name) for name in ("inputs", "combine", "denoiser")):
        return predict_noise
    return _Opaque(predict_noise)


@dataclass(eq=False)
class DenoiseRequest:
    """One strided DDPM reverse run as a resumable state (``models.driver.Request``).

    Step ``i`` goes from ``t = timesteps[i]`` to ``t_prev = timesteps.prev(i)`` with the rule of
    ``DDPMSchedule.step`` (DDPM eq. 7 on the strided pair, learned-range variance from the predictor's ``v``);
    the last step (to ``t_prev = -1``) gives ``x0_hat`` without noise.

    Attributes:
        x: (B, C, H, W) the current sample, at timestep ``timesteps[i]`` (replaced, never written in place).
        timesteps: strided timesteps with their schedule, e.g. 990, 960, ..., 0.
        guide: a guidance strategy (``models.diffusion.guidance``) or any ``predict_noise(x_t, t)``.
        i: index of ``x``'s timestep.
        project: hook applied to the sample after each step (inpainting).
        callback: ``callback(step, total, x_t, x0_hat)`` after each step; exceptions end the request.
        generator: source of the per-step noise.
        conditioning: per-sample network inputs (B, ...) besides the strategy's, repeated to every branch
            (stage II: the upscaled image and its noise level).
    """

    x: Tensor
    timesteps: StridedTimesteps
    guide: Any
    i: int
    project: Projection | None = None
    callback: Callback | None = None
    generator: torch.Generator | None = None
    conditioning: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.i < len(self.timesteps):
            raise ValueError(f"i_start must be in [0, {len(self.timesteps)}), got {self.i}")
        self.guide = _guide(self.guide)
        self.i_start = self.i

    @property
    def network(self) -> Any:
        return self.guide.denoiser

    @property
    def done(self) -> bool:
        return self.i == len(self.timesteps)

    def inputs(self) -> dict[str, Tensor]:
        inputs: dict[str, Tensor] = self.guide.inputs(self.x, self.timesteps[self.i])
        if self.conditioning:
            repeats = next(iter(inputs.values())).shape[0] // self.x.shape[0]
            for name, value in self.conditioning.items():
                inputs[name] = value.repeat(repeats, *([1] * (value.ndim - 1)))
        return inputs

    def advance(self, output: NoisePrediction) -> bool:
        t, t_prev = self.timesteps[self.i], self.timesteps.prev(self.i)
        eps, v = self.guide.combine(output)
        noise = randn(self.x, self.generator) if t_prev >= 0 else None
        x, x0_hat = self.timesteps.schedule.step(self.x, eps, t, t_prev, v=v, noise=noise)
        if self.project is not None:
            x = self.project(x, t_prev)
        self.x, self.i = x, self.i + 1
        if self.callback is not None:
            self.callback(self.i - self.i_start, len(self.timesteps) - self.i_start, x, x0_hat)
        return self.done


def iterative_denoise(
    x_t: Tensor,
    timesteps: StridedTimesteps,
    predict_noise: NoisePredictor,
    *,
    i_start: int,
    project: Projection | None = None,
    callback: Callback | None = None,
    generator: torch.Generator | None = None,
    conditioning: Mapping[str, Tensor] | None = None,
    runner: Runner | None = None,
) -> Tensor:
    """Run the strided DDPM reverse process from ``timesteps[i_start]`` to a clean image (see ``DenoiseRequest``).

    One network forward per step, holding every branch of ``predict_noise`` (and, with a shared ``runner``,
    the branches of other requests).

    Args:
        x_t: (B, C, H, W) sample at timestep ``timesteps[i_start]`` (not modified).
        timesteps: strided timesteps with their schedule, e.g. 990, 960, ..., 0.
        predict_noise: a guidance strategy, or any ``(x_t, t) -> NoisePrediction``.
        i_start: index of ``x_t``'s timestep in ``timesteps``, in [0, len(timesteps)).
        project: hook applied to the sample after each step (inpainting).
        callback: ``callback(step, total, x_t, x0_hat)`` after each step; exceptions propagate (cancellation).
        generator: source of the per-step noise.
        conditioning: per-sample network inputs repeated to every branch (stage II).
        runner: runs the request (``models.driver.drive`` alone by default; a worker's batcher shares forwards).

    Returns:
        (B, C, H, W) the denoised sample (``x0_hat`` of the last step, then ``project``-ed).
    """
    request = DenoiseRequest(
        x_t, timesteps, predict_noise, i_start, project, callback, generator, dict(conditioning or {})
    )
    (runner or drive)(request)
    return request.x
