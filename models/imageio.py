"""The one image codec of the project: image and mask bytes <-> tensors, PNG and GIF encoding, trajectories.

Used by the worker (uploads in, results out) and by the command lines (``models.diffusion.cli``,
``models.flow.sample``), so that both read an upload or a file the same way. The math modules of
``models`` never import it (an import contract checks this): this is the only module besides the command
lines that touches PIL.

Conventions:
- decoding applies the EXIF orientation (phone photos) and composites transparency on white (drawings);
- an image tensor is (1, 3, H, W) float32 in [-1, 1]; a mask is (1, 1, H, W) float32 in {0, 1}, 1 = generate;
- encoding is deterministic (no timestamps or text chunks): the same tensor gives the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = [
    "decode_image",
    "decode_mask",
    "gif_bytes",
    "png_bytes",
    "read_image",
    "read_mask",
    "strip",
    "to_uint8",
    "write_png",
]

ValueRange = tuple[float, float]


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    return ImageOps.exif_transpose(image) or image


def decode_image(data: bytes) -> Tensor:
    """PNG/JPEG/WebP bytes -> (1, 3, H, W) float32 in [-1, 1] (EXIF orientation applied, alpha on white)."""
    image = _open(data)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)


def decode_mask(data: bytes) -> Tensor:
    """Mask bytes -> (1, 1, H, W) float32 in {0, 1}, 1 = generate.

    A pixel is 1 when its luminance is >= 128 and, if the mask has an alpha channel, its alpha is >= 128 too
    (white and opaque = generate; black or transparent = keep). EXIF orientation is applied.
    """
    image = _open(data)
    keep = np.asarray(image.convert("L"), dtype=np.uint8) >= 128
    if _has_alpha(image):
        keep &= np.asarray(image.convert("RGBA"), dtype=np.uint8)[:, :, 3] >= 128
    return torch.from_numpy(keep.astype(np.float32)).unsqueeze(0).unsqueeze(0)


def read_image(path: str | Path) -> Tensor:
    """An image file, decoded as ``decode_image``."""
    return decode_image(Path(path).read_bytes())


def read_mask(path: str | Path) -> Tensor:
    """A mask file, decoded as ``decode_mask``."""
    return decode_mask(Path(path).read_bytes())


def to_uint8(image: Tensor, *, value_range: ValueRange = (0.0, 1.0)) -> np.ndarray:
    """(C, H, W) float in ``value_range`` -> (H, W, C) or, for C = 1, (H, W) uint8 (clamped, rounded)."""
    if image.dim() != 3:
        raise ValueError(f"expected (C, H, W), got {tuple(image.shape)}")
    lo, hi = value_range
    x = ((image.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _pil(image: Tensor, value_range: ValueRange, scale: int) -> Image.Image:
    pil = Image.fromarray(to_uint8(image, value_range=value_range))
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def png_bytes(image: Tensor, *, value_range: ValueRange = (0.0, 1.0), scale: int = 1) -> bytes:
    """One (C, H, W) image (C = 1 or 3) as PNG bytes, upscaled ``scale`` times with nearest neighbours."""
    buf = io.BytesIO()
    _pil(image, value_range, scale).save(buf, format="PNG")
    return buf.getvalue()


def write_png(image: Tensor, path: str | Path, *, value_range: ValueRange = (-1.0, 1.0), scale: int = 1) -> Path:
    """Write (1, C, H, W) or (C, H, W) as a PNG file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image[0] if image.dim() == 4 else image, value_range=value_range, scale=scale))
    return path


def gif_bytes(
    frames: Sequence[Tensor], *, value_range: ValueRange = (-1.0, 1.0), ms: int = 80, scale: int = 1, hold_last: int = 5
) -> bytes:
    """An animated GIF (looping) of (C, H, W) frames; the last frame is shown ``hold_last`` extra times."""
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    images = [_pil(f, value_range, scale) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:] + [images[-1]] * hold_last, duration=ms, loop=0
    )
    return buf.getvalue()


def strip(frames: Sequence[Tensor], max_frames: int = 10) -> Tensor:
    """At most ``max_frames`` evenly spaced (C, H, W) frames side by side: (C, H, k W), first and last included."""
    if not frames:
        raise ValueError("a strip needs at least one frame")
    n = max(1, min(max_frames, len(frames)))
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return torch.cat([frames[i] for i in idx], dim=-1)
