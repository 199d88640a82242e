"""Guidance strategies: noise predictors ``(x_t, t) -> NoisePrediction`` built on a conditional denoiser.

A *denoiser* is ``denoiser(x, t, embeds) -> NoisePrediction`` with x (N, C, H, W), per-row timesteps t (N,)
int64 and prompt embeddings (N, L, D) (the IF adapters in ``models.diffusion.adapter``, or an analytic
function in tests). Each strategy stacks all of its branches along the batch and calls the denoiser exactly
once per step. It does so in two halves, so that the step driver (``models.driver``) can put the branches of
many requests into one forward: ``inputs(x_t, t)`` gives the stacked network inputs ``{"x", "t", "embeds"}``
and ``combine(output)`` turns the denoiser's output rows back into one ``NoisePrediction``;
``strategy(x_t, t)`` is ``combine(denoiser(**inputs(x_t, t)))``.

Notation as in ``models.diffusion.schedule``. Classifier-free guidance with scale s
(Ho & Salimans 2022, eq. 6 with s = 1 + w; the Imagen/diffusers convention):
``eps = eps_uncond + s (eps_cond - eps_uncond)``.

Variance rule (decided once, for every strategy): the learned-range variance ``v`` is taken from the
*conditional* branches only. ``ClassifierFree`` returns the conditional ``v`` (as diffusers' IF pipelines do).
``Anagram`` returns the mean over views of the inverse-viewed conditional ``v`` (pixel permutation undone;
a sign flip does not change a variance). ``Hybrid`` returns the mean of the two conditional ``v`` (its views
are identities, so this is the same rule).

Anagrams (Geng, Park & Owens 2024, eq. 3): ``eps = mean_i view_i^{-1}(CFG(eps(view_i(x_t), prompt_i)))``.
Hybrid images (ibid., sec. 4.3): ``eps = low_pass(CFG_a) + high_pass(CFG_b)``; both prompts share one
unconditional branch because they see the same ``x_t``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .loop import NoisePrediction
from .views import View

__all__ = ["Anagram", "ClassifierFree", "Denoiser", "Guide", "Hybrid", "cfg_combine", "timestep_rows"]


class Denoiser(Protocol):
    """``denoiser(x, t, embeds)``: x (N, C, H, W), t (N,) int64, embeds (N, L, D) -> NoisePrediction (N, C, H, W)."""

    def __call__(self, x: Tensor, t: Tensor, embeds: Tensor) -> NoisePrediction: ...


class Guide(Protocol):
    """A strategy as the step driver uses it: its denoiser, and the two halves of one prediction."""

    denoiser: Denoiser

    def inputs(self, x_t: Tensor, t: int) -> dict[str, Tensor]: ...

    def combine(self, output: NoisePrediction) -> NoisePrediction: ...


def timestep_rows(t: int, rows: int, device: torch.device) -> Tensor:
    """The timestep ``t`` for each of ``rows`` stacked branches: (rows,) int64."""
    return torch.full((rows,), t, device=device, dtype=torch.long)


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """``eps_uncond + scale * (eps_cond - eps_uncond)`` (Ho & Salimans 2022, eq. 6, scale = 1 + w)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _rows(embeds: Tensor, batch: int) -> Tensor:
    """Embeddings (1 or batch, L, D) -> (batch, L, D)."""
    if embeds.ndim != 3:
        raise ValueError(f"embeddings must be (B, L, D), got {tuple(embeds.shape)}")
    if embeds.shape[0] == batch:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(batch, -1, -1)
    raise ValueError(f"embedding batch {embeds.shape[0]} does not match image batch {batch}")


@dataclass
class ClassifierFree:
    """Classifier-free guidance: one denoiser call on [uncond; cond] (2B images).

    Attributes:
        denoiser: conditional noise model.
        cond: (1 or B, L, D) prompt embeddings.
        uncond: (1 or B, L, D) null-prompt embeddings.
        scale: guidance scale s (1 = the conditional estimate).
    """

    denoiser: Denoiser
    cond: Tensor
    uncond: Tensor
    scale: float = 7.0

    def inputs(self, x_t: Tensor, t: int) -> dict[str, Tensor]:
        B = x_t.shape[0]
        embeds = torch.cat([_rows(self.uncond, B), _rows(self.cond, B)])
        return {"x": torch.cat([x_t, x_t]), "t": timestep_rows(t, 2 * B, x_t.device), "embeds": embeds}

    def combine(self, output: NoisePrediction) -> NoisePrediction:
        eps, v = output
        eps_u, eps_c = eps.chunk(2)
        return NoisePrediction(cfg_combine(eps_u, eps_c, self.scale), None if v is None else v.chunk(2)[1])

    def __call__(self, x_t: Tensor, t: int) -> NoisePrediction:
        return self.combine(self.denoiser(**self.inputs(x_t, t)))


@dataclass
class Anagram:
    """Visual-anagram guidance: view i of the sample is conditioned on prompt i; one call on 2 N B images.

    Attributes:
        denoiser: conditional noise model.
        views: N views (``views[i].view(x_0)`` should show prompt i).
        conds: N prompt embeddings, each (1 or B, L, D), or one (N, L, D) tensor.
        uncond: (1 or B, L, D) null-prompt embeddings.
        scale: guidance scale.
    """

    denoiser: Denoiser
    views: Sequence[View]
    conds: Sequence[Tensor] | Tensor
    uncond: Tensor
    scale: float = 7.0

    def __post_init__(self) -> None:
        if isinstance(self.conds, Tensor):
            self.conds = list(self.conds.split(1))
        if len(self.views) == 0 or len(self.views) != len(self.conds):
            raise ValueError(f"need one prompt per view, got {len(self.conds)} prompts for {len(self.views)} views")

    def inputs(self, x_t: Tensor, t: int) -> dict[str, Tensor]:
        B, n = x_t.shape[0], len(self.views)
        viewed = torch.cat([view.view(x_t) for view in self.views])  # (N B, C, H, W), view-major
        cond = torch.cat([_rows(c, B) for c in self.conds])
        embeds = torch.cat([_rows(self.uncond, B).repeat(n, 1, 1), cond])
        return {"x": torch.cat([viewed, viewed]), "t": timestep_rows(t, 2 * n * B, x_t.device), "embeds": embeds}

    def __call__(self, x_t: Tensor, t: int) -> NoisePrediction:
        return self.combine(self.denoiser(**self.inputs(x_t, t)))

    def combine(self, output: NoisePrediction) -> NoisePrediction:
        n = len(self.views)
        eps, v = output
        eps_u, eps_c = eps.chunk(2)
        guided = cfg_combine(eps_u, eps_c, self.scale).chunk(n)
        eps_out = torch.stack([view.inverse_view(e) for view, e in zip(self.views, guided, strict=True)]).mean(0)
        v_out = None
        if v is not None:
            v_cond = v.chunk(2)[1].chunk(n)
            v_out = torch.stack(
                [view.inverse_view_variance(w) for view, w in zip(self.views, v_cond, strict=True)]
            ).mean(0)
        return NoisePrediction(eps_out, v_out)


@dataclass
class Hybrid:
    """Hybrid-image guidance: low frequencies follow prompt a, high frequencies prompt b; one call on 3B images.

    Attributes:
        denoiser: conditional noise model.
        low_pass: (B, C, H, W) -> (B, C, H, W) low-pass filter, e.g. ``GaussianBlur(33, 2.0)``.
        conds: two prompt embeddings (low-frequency prompt, high-frequency prompt), each (1 or B, L, D).
        uncond: (1 or B, L, D) null-prompt embeddings.
        scale: guidance scale.
    """

    denoiser: Denoiser
    low_pass: Callable[[Tensor], Tensor]
    conds: Sequence[Tensor]
    uncond: Tensor
    scale: float = 7.0

    def __post_init__(self) -> None:
        if len(self.conds) != 2:
            raise ValueError(f"a hybrid needs exactly two prompts, got {len(self.conds)}")

    def inputs(self, x_t: Tensor, t: int) -> dict[str, Tensor]:
        B = x_t.shape[0]
        embeds = torch.cat([_rows(self.uncond, B), _rows(self.conds[0], B), _rows(self.conds[1], B)])
        return {"x": torch.cat([x_t, x_t, x_t]), "t": timestep_rows(t, 3 * B, x_t.device), "embeds": embeds}

    def __call__(self, x_t: Tensor, t: int) -> NoisePrediction:
        return self.combine(self.denoiser(**self.inputs(x_t, t)))

    def combine(self, output: NoisePrediction) -> NoisePrediction:
        eps, v = output
        eps_u, eps_a, eps_b = eps.chunk(3)
        guided_a = cfg_combine(eps_u, eps_a, self.scale)
        guided_b = cfg_combine(eps_u, eps_b, self.scale)
        eps_out = self.low_pass(guided_a) + (guided_b - self.low_pass(guided_b))
        v_out = None
        if v is not None:
            _, v_a, v_b = v.chunk(3)
            v_out = (v_a + v_b) / 2
        return NoisePrediction(eps_out, v_out)
