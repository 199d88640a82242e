"""PNG <-> tensor conversion for the worker (the only place that touches PIL with tensors).

Encoding is deterministic (no timestamps or text chunks), so the same tensor gives the same
bytes and the same seed gives the same PNG.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def to_uint8(image: torch.Tensor, *, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(C, H, W) float in `value_range` -> (H, W, C) or (H, W) uint8 array (clamped, rounded)."""
    if image.dim() != 3:
        raise ValueError(f"expected (C, H, W), got {tuple(image.shape)}")
    lo, hi = value_range
    x = ((image.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def png_bytes(image: torch.Tensor, *, value_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """Encode one (C, H, W) image (C = 1 or 3) as PNG bytes."""
    arr = to_uint8(image, value_range=value_range)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: list[torch.Tensor], *, value_range: tuple[float, float] = (-1.0, 1.0), ms: int = 80) -> bytes:
    """Animated GIF of (C, H, W) frames."""
    images = [Image.fromarray(to_uint8(f, value_range=value_range)) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)
    return buf.getvalue()
