"""DeepFloyd IF operations, all on the one loop ``iterative_denoise`` (``models.diffusion.loop``).

Conventions for every operation:

- images are (B, 3, H, W) float tensors in [-1, 1] on any device; inputs whose size differs from the
  model's ``image_size`` are center-cropped and resized (``center_crop_resize``); outputs are float32 on
  ``engine.device``, (B, 3, S, S) with S = ``engine.image_size``, clamped to [-1, 1];
- ``generator`` (required) is the only source of randomness: the same seed gives the same output;
- ``callback(step, total, x_t, x0_hat)`` runs after every denoising step (step = 1..total); if it raises, the
  exception propagates (cancellation);
- one UNet forward pass per step: every branch (conditional and unconditional, every view and prompt) is
  stacked along the batch by the guidance strategy (``models.diffusion.guidance``);
- ``stride``: timesteps ``990, 960, ..., 0`` for the default 30 (``i_start`` indexes this list).

Notation as in ``models.diffusion.schedule`` (``x_t``, ``t``, ``t_prev``, ``eps``, ``x0_hat``, ``abar_t``).
Variance rule: conditional variance for CFG, mean of the inverse-viewed conditional variances for anagrams
and hybrids (see ``models.diffusion.guidance``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..driver import Runner
from .engine import IFEngine, Stage2Engine
from .filters import GaussianBlur, gaussian_blur
from .guidance import Anagram, ClassifierFree, Denoiser, Hybrid
from .loop import Callback, iterative_denoise
from .schedule import StridedTimesteps, randn
from .schedule import forward as _forward
from .views import View

__all__ = [
    "DenoiseMethod",
    "DenoiseResult",
    "anagram",
    "center_crop_resize",
    "denoise",
    "forward",
    "hybrid",
    "inpaint",
    "sample",
    "sdedit",
    "upscale",
]

NULL_PROMPT = ""


def center_crop_resize(image: Tensor, size: int, *, mode: str = "bilinear") -> Tensor:
    """Crop the central square of ``image`` (B, C, H, W) and resize it to (B, C, size, size).

    ``mode="bilinear"`` (antialiased when shrinking) for images, ``"nearest"`` for masks.
    """
    if image.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(image.shape)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    H, W = image.shape[-2:]
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    crop = image[..., top : top + s, left : left + s]
    if s == size:
        return crop.clone()
    if mode == "nearest":
        return F.interpolate(crop, size=(size, size), mode="nearest-exact")
    if mode != "bilinear":
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    return F.interpolate(crop.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=s > size).to(
        image.dtype
    )


def _image(engine: IFEngine, image: Tensor) -> Tensor:
    """Validate (B, 3, H, W), move to the engine (float32) and bring to the model size."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    x = image.to(engine.device, torch.float32)
    if x.shape[-2:] != (engine.image_size, engine.image_size):
        x = center_crop_resize(x, engine.image_size)
    return x


def _mask(engine: IFEngine, mask: Tensor) -> Tensor:
    """Validate a binary (B, 1, H, W) mask, move it to the engine and bring it to the model size."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    m = mask.to(engine.device, torch.float32)
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must be binary: 1 where new content goes, 0 where the image is kept")
    if m.shape[-2:] != (engine.image_size, engine.image_size):
        m = center_crop_resize(m, engine.image_size, mode="nearest")
    return m


def _noise(engine: IFEngine, batch: int, generator: torch.Generator) -> Tensor:
    """x_T ~ N(0, I), (batch, 3, S, S) float32 on the engine."""
    S = engine.image_size
    return randn(torch.empty(batch, 3, S, S, device=engine.device), generator)


def _seeded(generator: torch.Generator) -> torch.Generator:
    """Every operation draws its noise from the caller's seeded generator, never from the global RNG."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a seeded torch.Generator, got {type(generator).__name__}")
    return generator


def _guidance(guidance: float) -> float:
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
    return float(guidance)


def _cfg(engine: IFEngine, prompt: str, guidance: float) -> ClassifierFree:
    cond, uncond = engine.encode([prompt, NULL_PROMPT]).split(1)
    return ClassifierFree(engine.adapter, cond, uncond, _guidance(guidance))


def _out(x: Tensor) -> Tensor:
    return x.float().clamp(-1.0, 1.0)


@torch.inference_mode()
def forward(engine: IFEngine, image: Tensor, t: int, *, generator: torch.Generator) -> Tensor:
    """The forward process: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4), not clamped."""
    _seeded(generator)
    T = engine.schedule.num_train_timesteps
    if not 0 <= t < T:
        raise ValueError(f"t must be in [0, {T}), got {t}")
    return _forward(_image(engine, image), t, engine.schedule, generator=generator)


@torch.inference_mode()
def sample(
    engine: IFEngine,
    prompt: str,
    *,
    guidance: float = 7.0,
    generator: torch.Generator,
    callback: Callback | None = None,
    stride: int = 30,
    batch_size: int = 1,
    runner: Runner | None = None,
) -> Tensor:
    """Text-to-image from pure noise with classifier-free guidance: (batch_size, 3, S, S)."""
    _seeded(generator)
    ts = engine.timesteps(stride)
    strategy = _cfg(engine, prompt, guidance)
    x = iterative_denoise(
        _noise(engine, batch_size, generator),
        ts,
        strategy,
        i_start=0,
        callback=callback,
        generator=generator,
        runner=runner,
    )
    return _out(x)


@torch.inference_mode()
def sdedit(
    engine: IFEngine,
    image: Tensor,
    prompt: str,
    *,
    i_start: int = 10,
    guidance: float = 7.0,
    generator: torch.Generator,
    callback: Callback | None = None,
    stride: int = 30,
    runner: Runner | None = None,
) -> Tensor:
    """SDEdit / image-to-image (Meng et al. 2022): noise ``image`` to ``timesteps[i_start]`` and denoise.

    Small ``i_start`` (more noise) follows the prompt, large ``i_start`` stays close to the image.
    """
    _seeded(generator)
    ts = engine.timesteps(stride)
    if not 0 <= i_start < len(ts):
        raise ValueError(f"i_start must be in [0, {len(ts)}) for stride {stride}, got {i_start}")
    x_0 = _image(engine, image)
    strategy = _cfg(engine, prompt, guidance)
    x_t = _forward(x_0, ts[i_start], engine.schedule, generator=generator)
    return _out(
        iterative_denoise(x_t, ts, strategy, i_start=i_start, callback=callback, generator=generator, runner=runner)
    )


@torch.inference_mode()
def inpaint(
    engine: IFEngine,
    image: Tensor,
    mask: Tensor,
    prompt: str,
    *,
    guidance: float = 7.0,
    generator: torch.Generator,
    callback: Callback | None = None,
    stride: int = 30,
    runner: Runner | None = None,
) -> Tensor:
    """Inpainting (RePaint, Lugmayr et al. 2022, eq. 8 without resampling): after every step
    ``x = m x + (1 - m) forward(image, t_prev)``; the last step uses t_prev = -1, so pixels with m = 0 equal
    ``image`` exactly.

    Args:
        image: (B, 3, H, W) in [-1, 1].
        mask: (B or 1, 1, H, W) binary, 1 where new content goes.
    """
    _seeded(generator)
    x_0 = _image(engine, image)
    m = _mask(engine, mask)
    schedule = engine.schedule

    def project(x: Tensor, t_prev: int) -> Tensor:
        return m * x + (1.0 - m) * _forward(x_0, t_prev, schedule, generator=generator)

    strategy = _cfg(engine, prompt, guidance)
    x = iterative_denoise(
        _noise(engine, x_0.shape[0], generator),
        engine.timesteps(stride),
        strategy,
        i_start=0,
        project=project,
        callback=callback,
        generator=generator,
        runner=runner,
    )
    return project(_out(x), -1)


@torch.inference_mode()
def anagram(
    engine: IFEngine,
    prompts: Sequence[str],
    views: Sequence[View],
    *,
    guidance: float = 7.0,
    generator: torch.Generator,
    callback: Callback | None = None,
    stride: int = 30,
    runner: Runner | None = None,
) -> Tensor:
    """Visual anagram (Geng et al. 2024): one image whose ``views[i].view(image)`` shows ``prompts[i]``.

    Returns the canonical (untransformed) image, (1, 3, S, S).
    """
    _seeded(generator)
    if isinstance(prompts, str) or len(prompts) != len(views) or len(prompts) < 1:
        raise ValueError(f"need one prompt per view, got {len(prompts)} prompts and {len(views)} views")
    probe = torch.zeros(1, 1, engine.image_size, engine.image_size)
    for v in views:
        v.view(probe)  # raises ValueError early if a view does not fit the image size
    embeds = engine.encode([*prompts, NULL_PROMPT])
    strategy = Anagram(engine.adapter, list(views), list(embeds[:-1].split(1)), embeds[-1:], _guidance(guidance))
    x = iterative_denoise(
        _noise(engine, 1, generator),
        engine.timesteps(stride),
        strategy,
        i_start=0,
        callback=callback,
        generator=generator,
        runner=runner,
    )
    return _out(x)


@torch.inference_mode()
def hybrid(
    engine: IFEngine,
    prompt_low: str,
    prompt_high: str,
    *,
    kernel_size: int = 33,
    sigma: float = 2.0,
    guidance: float = 7.0,
    generator: torch.Generator,
    callback: Callback | None = None,
    stride: int = 30,
    runner: Runner | None = None,
) -> Tensor:
    """Hybrid image (Geng et al. 2024, sec. 4.3): ``prompt_low`` from afar, ``prompt_high`` up close.

    ``eps = low_pass(eps_low) + high_pass(eps_high)`` with a Gaussian (``kernel_size``, ``sigma``) low-pass.
    Returns (1, 3, S, S).
    """
    _seeded(generator)
    low_pass = GaussianBlur(kernel_size, sigma)
    embeds = engine.encode([prompt_low, prompt_high, NULL_PROMPT])
    strategy = Hybrid(engine.adapter, low_pass, [embeds[0:1], embeds[1:2]], embeds[2:3], _guidance(guidance))
    x = iterative_denoise(
        _noise(engine, 1, generator),
        engine.timesteps(stride),
        strategy,
        i_start=0,
        callback=callback,
        generator=generator,
        runner=runner,
    )
    return _out(x)


class DenoiseMethod(str, Enum):
    """How ``denoise`` cleans a noised image."""

    BLUR = "blur"  # Gaussian blur of x_t (classical baseline)
    ONE_STEP = "one_step"  # x0_hat from one noise estimate (DDPM eq. 15)
    ITERATIVE = "iterative"  # the strided loop from t


@dataclass(frozen=True)
class DenoiseResult:
    """``noisy``: x_t (B, 3, S, S), ``denoised``: the estimate of x_0 (B, 3, S, S); both clamped to [-1, 1]."""

    noisy: Tensor
    denoised: Tensor


@torch.inference_mode()
def denoise(
    engine: IFEngine,
    image: Tensor,
    t: int,
    method: str | DenoiseMethod,
    *,
    prompt: str = "a high quality photo",
    guidance: float = 7.0,
    generator: torch.Generator,
    callback: Callback | None = None,
    stride: int = 30,
    blur_kernel_size: int = 5,
    blur_sigma: float = 2.0,
    runner: Runner | None = None,
) -> DenoiseResult:
    """Noise ``image`` to timestep ``t`` with the forward process, then denoise it with ``method``.

    ``iterative`` runs the loop over ``t`` followed by the strided timesteps below ``t``; ``one_step`` is the
    loop over ``t`` alone (one noise estimate, ``x0_hat`` by DDPM eq. 15); ``blur`` is a single step without
    the network (callback(1, 1, x0_hat, x0_hat)).
    """
    _seeded(generator)
    try:
        method = DenoiseMethod(method)
    except ValueError:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(m.value for m in DenoiseMethod)}") from None
    schedule = engine.schedule
    T = schedule.num_train_timesteps
    if not 0 <= t < T:
        raise ValueError(f"t must be in [0, {T}), got {t}")
    x_t = _forward(_image(engine, image), t, schedule, generator=generator)
    if method is DenoiseMethod.BLUR:
        x0_hat = gaussian_blur(x_t, blur_kernel_size, blur_sigma)
        if callback is not None:
            callback(1, 1, x0_hat, x0_hat)
    else:
        # one step is the loop over (t,): its only step returns x0_hat (DDPM eq. 15); iterative adds the
        # strided timesteps below t
        below = tuple(s for s in engine.timesteps(stride) if s < t) if method is DenoiseMethod.ITERATIVE else ()
        x0_hat = iterative_denoise(
            x_t,
            StridedTimesteps(schedule, (t, *below)),
            _cfg(engine, prompt, guidance),
            i_start=0,
            callback=callback,
            generator=generator,
            runner=runner,
        )
    return DenoiseResult(noisy=_out(x_t), denoised=_out(x0_hat))


@torch.inference_mode()
def upscale(
    stage2: Stage2Engine,
    image: Tensor,
    prompt: str,
    *,
    guidance: float = 4.0,
    noise_level: int = 250,
    generator: torch.Generator,
    callback: Callback | None = None,
    steps: int = 50,
    runner: Runner | None = None,
) -> Tensor:
    """IF stage II: upscale a stage-I result (B, 3, h, w) to (B, 3, S, S), S = ``stage2.image_size``.

    As diffusers' ``IFSuperResolutionPipeline``: the image is bilinearly upscaled, noised to ``noise_level``
    with the image-noising schedule, and concatenated to x_t at every step; ``steps`` timesteps
    ``(steps - 1) k, ..., k, 0`` with ``k = T // steps`` (980, ..., 0 for 50).
    """
    _seeded(generator)
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, h, w), got {tuple(image.shape)}")
    T = stage2.schedule.num_train_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    if not 0 <= noise_level < stage2.noise_schedule.num_train_timesteps:
        raise ValueError(f"noise_level must be in [0, {stage2.noise_schedule.num_train_timesteps}), got {noise_level}")
    S = stage2.image_size
    small = image.to(stage2.device, torch.float32)
    small = center_crop_resize(small, min(small.shape[-2:]))  # square
    up = F.interpolate(small, size=(S, S), mode="bilinear", align_corners=True)
    # x_T first, then the conditioning noise: the order of diffusers' pipeline, so the same seed matches it
    x_T = randn(torch.empty(image.shape[0], 3, S, S, device=stage2.device), generator)
    up_noisy = _forward(up, noise_level, stage2.noise_schedule, generator=generator)
    cond, uncond = stage2.encode([prompt, NULL_PROMPT]).split(1)
    # the stage-II denoiser also takes the image and its noise level per row: the request adds them
    strategy = ClassifierFree(cast(Denoiser, stage2.adapter), cond, uncond, _guidance(guidance))
    conditioning = {
        "image": up_noisy,
        "noise_level": torch.full((up_noisy.shape[0],), noise_level, device=up_noisy.device),
    }
    stride = T // steps
    ts = stage2.timesteps(stride, start=(steps - 1) * stride)
    return _out(
        iterative_denoise(
            x_T,
            ts,
            strategy,
            i_start=0,
            callback=callback,
            generator=generator,
            conditioning=conditioning,
            runner=runner,
        )
    )
