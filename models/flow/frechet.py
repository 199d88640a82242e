"""Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6):

``FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``.

``tr((S_1 S_2)^{1/2})`` is computed as the sum of square roots of the eigenvalues of the symmetric
PSD matrix ``S_1^{1/2} S_2 S_1^{1/2}`` (same spectrum as ``S_1 S_2``), in float64.
"""

from __future__ import annotations

import torch


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, F) -> mean (F,), unbiased covariance (F, F), float64."""
    f = features.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """FD between (N1, F) and (N2, F) feature sets (>= 0; 0 for identical sets)."""
    mu1, s1 = gaussian_stats(features_1)
    mu2, s2 = gaussian_stats(features_2)
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt
    return max(float(fd), 0.0)
