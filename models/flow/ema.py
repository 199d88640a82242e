"""Exponential moving average (EMA) of a network's weights, the copy that is sampled from and shipped.

After update k (k = 1, 2, ...) every floating-point entry of the state (parameters and BatchNorm
running statistics) is ``ema <- d_k ema + (1 - d_k) live`` with

    d_k = min(decay, (1 + k) / (10 + k))     (warm-up on; the TensorFlow / timm ``num_updates`` rule)
    d_k = decay                              (warm-up off)

so early updates are not dominated by the random initial weights. Integer buffers (BatchNorm's
``num_batches_tracked``) are copied. The average of weights along the trajectory approximates the
weights of a smaller step size late in training (Polyak & Juditsky 1992; used for diffusion models
since Ho et al. 2020 and Song et al. 2021).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Holds ``model``, a frozen eval-mode deep copy of the live network, averaged by :meth:`update`.

    Args:
        live: the network being trained (copied once; not modified).
        decay: the long-run decay ``d`` in [0, 1).
        warmup: use ``d_k = min(decay, (1 + k) / (10 + k))``.
    """

    def __init__(self, live: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = float(decay), warmup, 0
        self.model: Any = copy.deepcopy(live).eval().requires_grad_(False)  # the same class as live

    def decay_at(self, k: int) -> float:
        """The factor ``d_k`` used by update number k (1-based)."""
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        """One averaging step towards ``live`` (same architecture)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        ema_floats, live_floats = [], []
        for e, m in zip(self.model.state_dict().values(), live.state_dict().values(), strict=True):
            if e.is_floating_point():
                ema_floats.append(e)
                live_floats.append(m.detach())
            else:
                e.copy_(m)
        torch._foreach_lerp_(ema_floats, live_floats, 1.0 - d)
