"""Adapters from IF UNets to the denoiser interface ``(x, t, embeds) -> NoisePrediction``.

An IF UNet outputs 2C channels: the first C are ``eps``, the last C the learned-range variance ``v``
(Nichol & Dhariwal 2021, eq. 15; split as in diffusers' ``IFPipeline``). The T5 prompt embeddings go in as
``encoder_hidden_states`` without an attention mask (as in the IF pipelines).

The adapters cast inputs to the UNet's dtype (float16 on GPU) and return float32, so the loop runs in float32.
Shapes: x (N, C, H, W) in the noisy-image range, embeds (N, L, D), outputs (N, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .loop import NoisePrediction

__all__ = ["IFAdapter", "IFSuperResAdapter"]


def _split(out: Tensor, channels: int) -> NoisePrediction:
    out = out.float()
    if out.shape[1] == 2 * channels:
        eps, v = out.split(channels, dim=1)
        return NoisePrediction(eps, v)
    return NoisePrediction(out, None)


@dataclass
class IFAdapter:
    """Stage-I denoiser: ``unet(x_t, t, encoder_hidden_states=embeds)`` split into (eps, v)."""

    unet: Any  # a diffusers UNet2DConditionModel

    @torch.no_grad()
    def __call__(self, x: Tensor, t: int, embeds: Tensor) -> NoisePrediction:
        dtype = self.unet.dtype
        timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = self.unet(x.to(dtype), timestep, encoder_hidden_states=embeds.to(x.device, dtype), return_dict=False)[0]
        return _split(out, x.shape[1])


@dataclass
class IFSuperResAdapter:
    """Stage-II denoiser: the UNet sees ``cat([x_t, upscaled_noisy], dim=1)`` and the noise level as class label.

    Attributes:
        unet: stage-II UNet (2C input channels, 2C output channels, ``class_embed_type="timestep"``).
        image: (B, C, H, W) the stage-I image upscaled to H x W and noised to ``noise_level``; repeated to match
            the stacked branches (the strategies stack along the batch, branch-major).
        noise_level: timestep of the image-noising schedule used for ``image``.
    """

    unet: Any  # a diffusers UNet2DConditionModel
    image: Tensor
    noise_level: int

    @torch.no_grad()
    def __call__(self, x: Tensor, t: int, embeds: Tensor) -> NoisePrediction:
        B = self.image.shape[0]
        if x.shape[0] % B:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the conditioning batch {B}")
        reps = x.shape[0] // B
        dtype = self.unet.dtype
        cond = self.image.to(x.device).repeat(reps, 1, 1, 1)
        timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        labels = torch.full((x.shape[0],), self.noise_level, device=x.device, dtype=torch.long)
        out = self.unet(
            torch.cat([x, cond], dim=1).to(dtype),
            timestep,
            encoder_hidden_states=embeds.to(x.device, dtype),
            class_labels=labels,
            return_dict=False,
        )[0]
        return _split(out, x.shape[1])
