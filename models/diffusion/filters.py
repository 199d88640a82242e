"""Gaussian low-pass and high-pass filters (for blur denoising and hybrid images).

Hybrid images (Oliva, Torralba & Schyns 2006) combine the low frequencies of one image with the high
frequencies of another; Geng et al. 2024 ("Visual Anagrams", sec. 4.3) apply this to noise estimates:
``eps = low_pass(eps_a) + high_pass(eps_b)`` with ``high_pass(x) = x - low_pass(x)``, so
``low_pass(x) + high_pass(x) = x`` exactly.

The Gaussian kernel matches ``torchvision.transforms.functional.gaussian_blur``: separable, weights
``exp(-k^2 / (2 sigma^2))`` on ``k = -(n-1)/2 .. (n-1)/2``, normalized, reflect padding (replicate padding when
the image is too small to reflect, i.e. padding >= H or W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GaussianBlur", "gaussian_blur", "gaussian_kernel1d", "high_pass"]


def gaussian_kernel1d(
    kernel_size: int, sigma: float, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Normalized 1-D Gaussian weights, shape (kernel_size,)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    half = (kernel_size - 1) / 2
    k = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    return (w / w.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Blur each channel of x (B, C, H, W) with a separable Gaussian; returns (B, C, H, W)."""
    _, C, H, W = x.shape
    w = gaussian_kernel1d(kernel_size, sigma, dtype=x.dtype, device=x.device)
    pad = kernel_size // 2
    mode = "reflect" if pad < min(H, W) else "replicate"
    y = F.pad(x, (pad, pad, pad, pad), mode=mode)
    y = F.conv2d(y, w.view(1, 1, 1, -1).expand(C, 1, 1, kernel_size), groups=C)
    return F.conv2d(y, w.view(1, 1, -1, 1).expand(C, 1, kernel_size, 1), groups=C)


@dataclass(frozen=True)
class GaussianBlur:
    """A Gaussian low-pass filter as a callable: (B, C, H, W) -> (B, C, H, W). IF hybrid default: 33, sigma 2."""

    kernel_size: int = 33
    sigma: float = 2.0

    def __post_init__(self) -> None:
        gaussian_kernel1d(self.kernel_size, self.sigma)  # validate

    def __call__(self, x: Tensor) -> Tensor:
        return gaussian_blur(x, self.kernel_size, self.sigma)


def high_pass(x: Tensor, low_pass: GaussianBlur) -> Tensor:
    """``x - low_pass(x)``: the complementary high-pass, so ``low_pass(x) + high_pass(x, low_pass) == x``."""
    return x - low_pass(x)
