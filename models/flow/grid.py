"""Tile a batch of images into one image tensor (no padding, row-major)."""

from __future__ import annotations

import torch


def make_grid(images: torch.Tensor, ncols: int) -> torch.Tensor:
    """Tile ``images`` (N, C, H, W) into (C, H * rows, W * ncols), rows = ceil(N / ncols).

    Image k goes to row ``k // ncols``, column ``k % ncols``; a partial last row is zero-filled.
    No padding between tiles. The input is not modified.
    """
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got {tuple(images.shape)}")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    n, c, h, w = images.shape
    rows = max(1, -(-n // ncols))
    full = images.new_zeros((rows * ncols, c, h, w))
    full[:n] = images
    # (rows, ncols, C, H, W) -> (C, rows, H, ncols, W) -> (C, rows*H, ncols*W)
    return full.reshape(rows, ncols, c, h, w).permute(2, 0, 3, 1, 4).reshape(c, rows * h, ncols * w)
