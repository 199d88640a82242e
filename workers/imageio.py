"""PNG <-> tensor conversion for the worker (the only place that touches PIL with tensors).

Encoding is deterministic (no timestamps or text chunks), so the same tensor gives the same
bytes and the same seed gives the same PNG.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageOps


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


def decode_image(data: bytes) -> torch.Tensor:
    """An uploaded PNG/JPEG/WebP (already validated by the API) -> (1, 3, H, W) float in [-1, 1].

    EXIF orientation is applied (phone photos); transparency is composited on white (drawings).
    """
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)


def decode_mask(data: bytes) -> torch.Tensor:
    """An uploaded mask -> (1, 1, H, W) float in {0, 1}, 1 = generate.

    Thresholding: a pixel is 1 when its luminance is >= 128 and, if the mask has an alpha channel,
    its alpha is >= 128 too (white and opaque = generate; black or transparent = keep).
    """
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    lum = np.asarray(image.convert("L"), dtype=np.uint8) >= 128
    if has_alpha:
        lum &= np.asarray(image.convert("RGBA"), dtype=np.uint8)[:, :, 3] >= 128
    return torch.from_numpy(lum.astype(np.float32)).unsqueeze(0).unsqueeze(0)
