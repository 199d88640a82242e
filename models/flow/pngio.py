"""PNG writing for the CLIs only (image grids and a loss-curve plot drawn with PIL).

Library code in ``models/`` returns tensors; only the command-line entry points import this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .grid import make_grid


def tensor_to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """(1, H, W) or (H, W) in [0, 1] -> grayscale PIL image (nearest-neighbour upscaled by ``scale``)."""
    img = image.detach().float().cpu().clamp(0, 1)
    if img.dim() == 3:
        img = img[0]
    arr = (img * 255).round().to(torch.uint8).numpy()
    pil = Image.fromarray(arr, mode="L")
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def save_grid(images: torch.Tensor, ncols: int, path: str | os.PathLike, scale: int = 2) -> None:
    """Tile (N, 1, H, W) in [0, 1] row-major into ``path`` (PNG)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(make_grid(images, ncols), scale).save(path)


def save_loss_curve(
    losses: Sequence[float], path: str | os.PathLike, *, title: str = "training loss", log_y: bool = True
) -> None:
    """A simple line plot of per-step losses (raw in grey, moving average in blue), log y-axis."""
    w, h, m = 800, 450, 60
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((m, 15), title, fill="black")
    vals = [float(v) for v in losses if v > 0 and math.isfinite(v)]
    if len(vals) >= 2:
        f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
        ys = [f(v) for v in vals]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1
        n = len(ys)

        def pt(i: int, y: float) -> tuple[float, float]:
            return m + (w - 2 * m) * i / (n - 1), h - m - (h - 2 * m) * (y - lo) / (hi - lo)

        d.line([pt(i, y) for i, y in enumerate(ys)], fill=(190, 190, 190), width=1)
        k = max(1, n // 50)
        avg = [sum(ys[max(0, i - k) : i + 1]) / (i + 1 - max(0, i - k)) for i in range(n)]
        d.line([pt(i, y) for i, y in enumerate(avg)], fill=(30, 80, 200), width=2)
        for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = lo + frac * (hi - lo)
            label = f"{10**y:.3g}" if log_y else f"{y:.3g}"
            _, py = pt(0, y)
            d.line([(m - 5, py), (m, py)], fill="black")
            d.text((5, py - 6), label, fill="black")
        d.text((w // 2 - 20, h - m + 20), f"step (0..{n})", fill="black")
    d.rectangle([m, m, w - m, h - m], outline="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
