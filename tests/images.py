"""Small test images made on the fly (no binary fixtures in git)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def gradient(width: int = 48, height: int = 40, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def half_mask(width: int, height: int, mode: str = "L") -> bytes:
    """White (generate) on the left half, black (keep) on the right half."""
    arr = np.zeros((height, width), np.uint8)
    arr[:, : width // 2] = 255
    img = Image.fromarray(arr, "L")
    if mode == "RGBA":
        rgba = Image.new("RGBA", img.size, (0, 0, 0, 0))
        rgba.paste(Image.new("RGBA", img.size, (255, 255, 255, 255)), mask=img)
        img = rgba
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def noise(width: int = 64, height: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    """Incompressible content, so that cutting the file in half really truncates the pixel data."""
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()
