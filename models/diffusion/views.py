"""Views for visual anagrams (Geng, Park & Owens 2024, "Visual Anagrams", sec. 3).

A view is an orthogonal transform of pixel space: a permutation of pixels, optionally with a sign flip. Such a
transform maps a standard normal ``eps`` to a standard normal ``eps`` (the paper's condition, sec. 3.2), so a
noise estimate made on a viewed image can be mapped back with ``inverse_view`` and averaged with the others.

Every method takes and returns (B, C, H, W) tensors (any batch and channel count); rotations by 90/270
degrees need H == W, the patch permutation needs H and W divisible by its grid. Tensors are never modified in
place.

``inverse_view_variance`` maps a predicted variance back: variances are invariant to a sign flip, so only the
pixel permutation is undone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "VIEWS",
    "FlipHorizontal",
    "FlipVertical",
    "Identity",
    "Negate",
    "PatchPermute",
    "Rotate",
    "View",
    "get_view",
]


class View:
    """Base class: ``view(x)`` and its inverse ``inverse_view(x)``, both (B, C, H, W) -> (B, C, H, W)."""

    name: str = "view"
    negates: bool = False  # True if the view flips the sign of pixel values

    def view(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse_view(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse_view_variance(self, v: Tensor) -> Tensor:
        """Undo the pixel permutation of a variance map (B, C, H, W); a sign flip does not change a variance."""
        out = self.inverse_view(v)
        return -out if self.negates else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(View):
    name = "identity"

    def view(self, x: Tensor) -> Tensor:
        return x

    def inverse_view(self, x: Tensor) -> Tensor:
        return x


class FlipVertical(View):
    """Upside down (flip along H)."""

    name = "flip_vertical"

    def view(self, x: Tensor) -> Tensor:
        return torch.flip(x, dims=(-2,))

    def inverse_view(self, x: Tensor) -> Tensor:
        return torch.flip(x, dims=(-2,))


class FlipHorizontal(View):
    """Mirror (flip along W)."""

    name = "flip_horizontal"

    def view(self, x: Tensor) -> Tensor:
        return torch.flip(x, dims=(-1,))

    def inverse_view(self, x: Tensor) -> Tensor:
        return torch.flip(x, dims=(-1,))


class Rotate(View):
    """Rotation by ``quarter_turns`` x 90 degrees counterclockwise (``torch.rot90`` on dims (H, W))."""

    def __init__(self, quarter_turns: int) -> None:
        self.k = quarter_turns % 4
        self.name = f"rot{90 * self.k}"

    def _check(self, x: Tensor) -> None:
        if self.k % 2 and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{self.name} needs a square image, got {tuple(x.shape[-2:])}")

    def view(self, x: Tensor) -> Tensor:
        self._check(x)
        return torch.rot90(x, self.k, dims=(-2, -1))

    def inverse_view(self, x: Tensor) -> Tensor:
        self._check(x)
        return torch.rot90(x, -self.k, dims=(-2, -1))

    def __repr__(self) -> str:
        return f"Rotate({self.k})"


class Negate(View):
    """``x -> -x`` (a sign flip; the paper's "negation" view)."""

    name = "negate"
    negates = True

    def view(self, x: Tensor) -> Tensor:
        return -x

    def inverse_view(self, x: Tensor) -> Tensor:
        return -x


class PatchPermute(View):
    """Cut the image into a ``grid`` x ``grid`` array of equal patches and rearrange them (a jigsaw).

    Output patch ``j`` (row-major) is input patch ``permutation[j]``. The default permutation is
    ``j -> (3 j + 1) mod grid^2``, which moves every patch when grid^2 is even (no fixed points).
    """

    def __init__(self, grid: int = 4, permutation: Sequence[int] | None = None, name: str = "patch_permute") -> None:
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        n = grid * grid
        perm = list(permutation) if permutation is not None else [(3 * j + 1) % n for j in range(n)]
        if sorted(perm) != list(range(n)):
            raise ValueError(f"permutation must be a permutation of range({n}), got {perm}")
        self.grid = grid
        self.name = name
        self.perm = torch.tensor(perm, dtype=torch.long)
        self.inv = torch.argsort(self.perm)

    def _apply(self, x: Tensor, perm: Tensor) -> Tensor:
        *lead, H, W = x.shape
        g = self.grid
        if H % g or W % g:
            raise ValueError(f"{self.name} with grid {g} needs H and W divisible by {g}, got {(H, W)}")
        ph, pw = H // g, W // g
        patches = x.reshape(*lead, g, ph, g, pw).movedim(-3, -2).reshape(*lead, g * g, ph, pw)
        patches = patches.index_select(-3, perm.to(x.device))
        return patches.reshape(*lead, g, g, ph, pw).movedim(-2, -3).reshape(*lead, H, W)

    def view(self, x: Tensor) -> Tensor:
        return self._apply(x, self.perm)

    def inverse_view(self, x: Tensor) -> Tensor:
        return self._apply(x, self.inv)

    def __repr__(self) -> str:
        return f"PatchPermute(grid={self.grid}, permutation={self.perm.tolist()})"


VIEWS: dict[str, Callable[[], View]] = {
    "identity": Identity,
    "flip_vertical": FlipVertical,
    "flip_horizontal": FlipHorizontal,
    "rot90": lambda: Rotate(1),
    "rot180": lambda: Rotate(2),
    "rot270": lambda: Rotate(3),
    "negate": Negate,
    "jigsaw": lambda: PatchPermute(grid=4, name="jigsaw"),
}
"""Named view factories; ``rot90`` is a quarter turn counterclockwise, ``rot270`` clockwise."""


def get_view(name: str) -> View:
    """A fresh view by name; ValueError listing the valid names otherwise."""
    try:
        return VIEWS[name]()
    except KeyError:
        raise ValueError(f"unknown view {name!r}; valid views: {', '.join(sorted(VIEWS))}") from None
