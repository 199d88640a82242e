"""A small configurable UNet for 1x28x28 MNIST digits, written from scratch.

One network class, three variants chosen by :class:`UNetConfig.conditioning`:

* ``"none"``  -- unconditional; used as the one-step denoiser ``x_noisy -> x``.
* ``"time"``  -- time-conditioned flow-matching velocity ``u(x_t, t)``.
* ``"class"`` -- time- and class-conditioned velocity ``u(x_t, t, c)``; ``c`` is a one-hot class
  vector, all zeros meaning "no class" (classifier-free guidance, Ho & Salimans 2022).

Notation (flow matching, Lipman et al. 2023; Liu et al. 2023): ``x_0`` noise, ``x_1`` data,
``x_t = (1 - t) x_0 + t x_1``, t from 0 (noise) to 1 (data).

Path for a ``(B, C, S, S)`` input at width ``D`` (S = 28 for MNIST, S must be divisible by 4)::

    ConvBlock          -> D  @ S          (skip e1)
    DownBlock          -> D  @ S/2        (skip e2)
    DownBlock          -> 2D @ S/4        (skip e3)
    Flatten            -> 2D @ 1
    Unflatten          -> 2D @ S/4        (* t1, or c1 * . + t1)
    cat(e3), UpBlock   -> D  @ S/2        (* t2, or c2 * . + t2)
    cat(e2), UpBlock   -> D  @ S
    cat(e1), ConvBlock -> D  @ S
    Conv2d 3x3         -> C  @ S

The blocks and the conditioning follow the CS180 (Berkeley, fall 2024) project 5B architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

Conditioning = Literal["none", "time", "class"]
CONDITIONINGS: tuple[str, ...] = ("none", "time", "class")


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`FlowUNet` (serialised next to each checkpoint).

    Attributes:
        conditioning: ``"none"``, ``"time"`` or ``"class"``.
        num_hiddens: width ``D``.
        in_channels: image channels ``C`` (1 for MNIST).
        image_size: side ``S`` of the square input (28 for MNIST); must be divisible by 4.
        num_classes: size of the one-hot class vector (class variant only).
    """

    conditioning: Conditioning = "time"
    num_hiddens: int = 64
    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.num_hiddens < 1 or self.in_channels < 1 or self.num_classes < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig fields: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Blocks. Each maps (B, in, H, W) -> (B, out, H', W') as noted.


class Conv(nn.Sequential):
    """Conv2d 3x3 s1 p1 + BN + GELU: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.GELU())


class DownConv(nn.Sequential):
    """Conv2d 3x3 s2 p1 + BN + GELU: (B, cin, H, W) -> (B, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.GELU())


class UpConv(nn.Sequential):
    """ConvTranspose2d 4x4 s2 p1 + BN + GELU: (B, cin, H, W) -> (B, cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.GELU())


class Flatten(nn.Sequential):
    """AvgPool2d(k) + GELU: (B, c, k, k) -> (B, c, 1, 1)."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__(nn.AvgPool2d(kernel), nn.GELU())


class Unflatten(nn.Sequential):
    """ConvTranspose2d kxk stride k + BN + GELU: (B, c, 1, 1) -> (B, c, k, k)."""

    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__(nn.ConvTranspose2d(channels, channels, kernel, kernel), nn.BatchNorm2d(channels), nn.GELU())


class ConvBlock(nn.Sequential):
    """Two :class:`Conv`: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(Conv(cin, cout), Conv(cout, cout))


class DownBlock(nn.Sequential):
    """:class:`DownConv` then :class:`ConvBlock`: (B, cin, H, W) -> (B, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(DownConv(cin, cout), ConvBlock(cout, cout))


class UpBlock(nn.Sequential):
    """:class:`UpConv` then :class:`ConvBlock`: (B, cin, H, W) -> (B, cout, 2H, 2W)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(UpConv(cin, cout), ConvBlock(cout, cout))


class FCBlock(nn.Sequential):
    """Linear + GELU + Linear: (B, cin) -> (B, cout)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Linear(cin, cout), nn.GELU(), nn.Linear(cout, cout))


# ----------------------------------------------------------------------------------------------


class Features(NamedTuple):
    """The encoder's outputs for a (B, C, S, S) input at width D; none depends on t or c.

    e1: (B, D, S, S); e2: (B, D, S/2, S/2); e3: (B, 2D, S/4, S/4); h: (B, 2D, S/4, S/4), the
    bottleneck after Flatten + Unflatten, before the conditioning.
    """

    e1: torch.Tensor
    e2: torch.Tensor
    e3: torch.Tensor
    h: torch.Tensor


class FlowUNet(nn.Module):
    """The UNet of the module docstring; the variant is fixed by ``config.conditioning``.

    ``forward(x, t=None, c=None)``:
        x: (B, C, S, S), roughly unit scale (noise, data in [0, 1], or a mix).
        t: (B,) or (B, 1) in [0, 1]; required for "time" and "class", ignored for "none".
        c: (B, num_classes) one-hot (float) or all zeros for "unconditional"; required for "class".
        returns (B, C, S, S): the clean-image estimate ("none") or the velocity ``x_1 - x_0``.

    ``forward`` is ``decode(encode(x), t, c)``: t and c enter only after the encoder, so callers that
    evaluate one x under several conditions (classifier-free guidance) can encode once.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        d, cin, k = config.num_hiddens, config.in_channels, config.image_size // 4
        self.conv_in = ConvBlock(cin, d)
        self.down1 = DownBlock(d, d)
        self.down2 = DownBlock(d, 2 * d)
        self.flatten = Flatten(k)
        self.unflatten = Unflatten(2 * d, k)
        self.up1 = UpBlock(4 * d, d)
        self.up2 = UpBlock(2 * d, d)
        self.conv_out = ConvBlock(2 * d, d)
        self.head = nn.Conv2d(d, cin, 3, 1, 1)
        if config.conditioning in ("time", "class"):
            self.fc1_t = FCBlock(1, 2 * d)
            self.fc2_t = FCBlock(1, d)
        if config.conditioning == "class":
            self.fc1_c = FCBlock(config.num_classes, 2 * d)
            self.fc2_c = FCBlock(config.num_classes, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        self._check(t, c)
        return self.decode(self.encode(x), t, c)

    def _check(self, t: torch.Tensor | None, c: torch.Tensor | None) -> None:
        cond = self.config.conditioning
        if cond != "none" and t is None:
            raise ValueError(f"a {cond!r}-conditioned UNet needs t")
        if cond == "class" and c is None:
            raise ValueError("a class-conditioned UNet needs c (one-hot, zeros for unconditional)")

    def encode(self, x: torch.Tensor) -> Features:
        """The condition-free part of the network: (B, C, S, S) -> :class:`Features`."""
        e1 = self.conv_in(x)
        e2 = self.down1(e1)
        e3 = self.down2(e2)
        return Features(e1, e2, e3, self.unflatten(self.flatten(e3)))

    def decode(self, f: Features, t: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioned part: :class:`Features` of B images, t (B,), c (B, K) -> (B, C, S, S).

        The rows of ``f``, t and c must match (repeat the features to decode one image under several
        conditions).
        """
        self._check(t, c)
        cond = self.config.conditioning
        h = f.h
        if cond != "none":
            assert t is not None
            t = t.reshape(-1, 1).to(h.dtype)
            t1 = self.fc1_t(t)[:, :, None, None]
            t2 = self.fc2_t(t)[:, :, None, None]
            if cond == "class":
                assert c is not None
                c = c.to(h.dtype)
                c1 = self.fc1_c(c)[:, :, None, None]
                h = c1 * h + t1
            else:
                h = h * t1
        u1 = self.up1(torch.cat([h, f.e3], dim=1))
        if cond == "class":
            c2 = self.fc2_c(c)[:, :, None, None]
            u1 = c2 * u1 + t2
        elif cond == "time":
            u1 = u1 * t2
        u2 = self.up2(torch.cat([u1, f.e2], dim=1))
        out = self.conv_out(torch.cat([u2, f.e1], dim=1))
        return self.head(out)


def build_model(config: UNetConfig) -> FlowUNet:
    """Construct a freshly initialised :class:`FlowUNet` for ``config``."""
    return FlowUNet(config)
