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


def _timesteps(t: int | Tensor, rows: int, device: torch.device) -> Tensor:
    if isinstance(t, Tensor):
        return t.to(device=device, dtype=torch.long)
    return torch.full((rows,), t, device=device, dtype=torch.long)


@dataclass
class IFAdapter:
    """Stage-I denoiser: ``unet(x_t, t, encoder_hidden_states=embeds)`` split into (eps, v).

    ``t`` is (N,) int64, one timestep per row (rows of several requests may be at different steps), or an int
    for every row. Requests that use the same UNet share a forward (``key``)."""

    unet: Any  # a diffusers UNet2DConditionModel

    @property
    def key(self) -> Any:
        return self.unet

    @torch.no_grad()
    def __call__(self, x: Tensor, t: int | Tensor, embeds: Tensor) -> NoisePrediction:
        dtype = self.unet.dtype
        timestep = _timesteps(t, x.shape[0], x.device)
        out = self.unet(x.to(dtype), timestep, encoder_hidden_states=embeds.to(x.device, dtype), return_dict=False)[0]
        return _split(out, x.shape[1])


@dataclass
class IFSuperResAdapter:
    """Stage-II denoiser: the UNet sees ``cat([x_t, image], dim=1)`` and the image's noise level as class label.

    Per row: ``x`` (N, C, H, W), ``t`` (N,), ``embeds`` (N, L, D), ``image`` (N, C, H, W) the stage-I image
    upscaled to H x W and noised to ``noise_level`` (N,) int64 (a request repeats its image to every branch).

    Attributes:
        unet: stage-II UNet (2C input channels, 2C output channels, ``class_embed_type="timestep"``).
    """

    unet: Any  # a diffusers UNet2DConditionModel

    @property
    def key(self) -> Any:
        return self.unet

    @torch.no_grad()
    def __call__(
        self, x: Tensor, t: int | Tensor, embeds: Tensor, image: Tensor, noise_level: Tensor
    ) -> NoisePrediction:
        if image.shape[0] != x.shape[0] or noise_level.shape[0] != x.shape[0]:
            raise ValueError(f"conditioning rows {image.shape[0]}/{noise_level.shape[0]} != {x.shape[0]} rows")
        dtype = self.unet.dtype
        timestep = _timesteps(t, x.shape[0], x.device)
        out = self.unet(
            torch.cat([x, image.to(x.device)], dim=1).to(dtype),
            timestep,
            encoder_hidden_states=embeds.to(x.device, dtype),
            class_labels=noise_level.to(x.device, torch.long),
            return_dict=False,
        )[0]
        return _split(out, x.shape[1])
