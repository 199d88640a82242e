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


#: Line colours of :func:`save_panels`, in series order.
COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def save_panels(
    panels: Sequence[dict],
    path: str | os.PathLike,
    *,
    ncols: int = 2,
    size: tuple[int, int] = (560, 380),
    title: str = "",
) -> None:
    """Line charts on a grid, drawn with PIL (no plotting library needed).

    Each panel is ``{"title": str, "xlabel": str, "ylabel": str, "series": {label: [(x, y), ...]},
    "hlines": [(y, label), ...] (optional reference lines), "log_x": bool (optional)}``.
    """
    pw, ph = size
    nrows = max(1, math.ceil(len(panels) / ncols))
    top = 30 if title else 0
    img = Image.new("RGB", (pw * ncols, ph * nrows + top), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((10, 8), title, fill="black")
    for k, panel in enumerate(panels):
        ox, oy = (k % ncols) * pw, top + (k // ncols) * ph
        _draw_panel(d, (ox, oy, pw, ph), panel)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _draw_panel(d: ImageDraw.ImageDraw, box: tuple[int, int, int, int], panel: dict) -> None:
    ox, oy, pw, ph = box
    ml, mr, mt, mb = 62, 130, 28, 44  # margins: left axis labels, right legend, title, x labels
    x0, y0, x1, y1 = ox + ml, oy + mt, ox + pw - mr, oy + ph - mb
    series = {k: [(float(x), float(y)) for x, y in v] for k, v in panel["series"].items() if v}
    hlines = [(float(y), str(lab)) for y, lab in panel.get("hlines", [])]
    log_x = bool(panel.get("log_x", False))
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    xs = [fx(x) for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts] + [y for y, _ in hlines]
    d.text((ox + ml, oy + 8), panel.get("title", ""), fill="black")
    d.rectangle([x0, y0, x1, y1], outline="black")
    if not xs:
        return
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    pad = 0.06 * (yhi - ylo if yhi > ylo else 1.0)
    ylo, yhi = ylo - pad, yhi + pad

    def pt(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x1 - x0) * (fx(x) - xlo) / (xhi - xlo), y1 - (y1 - y0) * (y - ylo) / (yhi - ylo))

    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        yv = ylo + frac * (yhi - ylo)
        py = y1 - (y1 - y0) * frac
        d.line([(x0 - 4, py), (x0, py)], fill="black")
        d.text((ox + 4, py - 6), f"{yv:.4g}", fill="black")
    xticks = sorted({x for pts in series.values() for x, _ in pts})
    if len(xticks) > 10:
        xticks = xticks[:: math.ceil(len(xticks) / 10)]
    for xv in xticks:
        px, _ = pt(xv, ylo)
        d.line([(px, y1), (px, y1 + 4)], fill="black")
        d.text((px - 8, y1 + 6), f"{xv:g}", fill="black")
    d.text(((x0 + x1) // 2 - 30, y1 + 22), panel.get("xlabel", ""), fill="black")
    d.text((ox + 4, oy + 14), panel.get("ylabel", ""), fill=(90, 90, 90))
    for y, lab in hlines:
        py = y1 - (y1 - y0) * (y - ylo) / (yhi - ylo)
        for sx in range(int(x0), int(x1), 8):
            d.line([(sx, py), (min(sx + 4, x1), py)], fill=(120, 120, 120))
        d.text((x0 + 4, py - 12), lab, fill=(90, 90, 90))
    for i, (label, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted(pts)
        xy = [pt(x, y) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=colour, width=2)
        for px, py in xy:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        ly = y0 + 4 + 14 * i
        d.line([(x1 + 6, ly + 6), (x1 + 20, ly + 6)], fill=colour, width=3)
        d.text((x1 + 24, ly), label, fill="black")
