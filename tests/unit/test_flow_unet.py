"""Shapes of every UNet block and of the three variants."""

from __future__ import annotations

import pytest
import torch

from models.flow.unet import (
    Conv,
    ConvBlock,
    DownBlock,
    DownConv,
    FCBlock,
    Flatten,
    FlowUNet,
    UNetConfig,
    Unflatten,
    UpBlock,
    UpConv,
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize(
    ("block", "in_shape", "out_shape"),
    [
        (Conv(3, 5), (2, 3, 28, 28), (2, 5, 28, 28)),
        (DownConv(3, 5), (2, 3, 28, 28), (2, 5, 14, 14)),
        (DownConv(3, 5), (2, 3, 14, 14), (2, 5, 7, 7)),
        (UpConv(3, 5), (2, 3, 7, 7), (2, 5, 14, 14)),
        (UpConv(3, 5), (2, 3, 14, 14), (2, 5, 28, 28)),
        (Flatten(7), (2, 6, 7, 7), (2, 6, 1, 1)),
        (Unflatten(6, 7), (2, 6, 1, 1), (2, 6, 7, 7)),
        (ConvBlock(3, 5), (2, 3, 28, 28), (2, 5, 28, 28)),
        (DownBlock(3, 5), (2, 3, 28, 28), (2, 5, 14, 14)),
        (UpBlock(3, 5), (2, 3, 14, 14), (2, 5, 28, 28)),
        (FCBlock(10, 6), (2, 10), (2, 6)),
        (FCBlock(1, 6), (2, 1), (2, 6)),
    ],
)
def test_block_shapes(block: torch.nn.Module, in_shape: tuple, out_shape: tuple, gen: torch.Generator) -> None:
    assert block(torch.randn(in_shape, generator=gen)).shape == out_shape


def test_block_layers() -> None:
    up = UpConv(2, 3)[0]
    assert isinstance(up, torch.nn.ConvTranspose2d) and up.kernel_size == (4, 4) and up.stride == (2, 2)
    down = DownConv(2, 3)[0]
    assert isinstance(down, torch.nn.Conv2d) and down.kernel_size == (3, 3) and down.stride == (2, 2)
    unf = Unflatten(4, 7)[0]
    assert unf.kernel_size == (7, 7) and unf.stride == (7, 7)


@pytest.mark.parametrize("conditioning", ["none", "time", "class"])
@pytest.mark.parametrize("d", [4, 8])
def test_variant_shapes(conditioning: str, d: int, gen: torch.Generator) -> None:
    model = FlowUNet(UNetConfig(conditioning=conditioning, num_hiddens=d)).eval()
    x = torch.randn(3, 1, 28, 28, generator=gen)
    t = torch.rand(3, generator=gen)
    c = torch.nn.functional.one_hot(torch.tensor([0, 4, 9]), 10).float()
    out = model(x, t, c)
    assert out.shape == (3, 1, 28, 28)
    # internal widths: D@28, D@14, 2D@7, up path back to D
    assert model.down2[0][0].out_channels == 2 * d
    assert model.up1[0][0].in_channels == 4 * d and model.up1[0][0].out_channels == d
    assert model.up2[0][0].in_channels == 2 * d
    assert model.head.out_channels == 1


def test_conditioning_is_used(gen: torch.Generator) -> None:
    from models.flow.training import build_seeded_model

    x = torch.randn(4, 1, 28, 28, generator=gen)
    t = torch.rand(4, generator=gen)
    # train mode: BatchNorm uses batch statistics, so the (tiny at init) conditioning signal is visible
    tm = build_seeded_model(UNetConfig("time", 4), seed=0).train()
    cm = build_seeded_model(UNetConfig("class", 4), seed=0).train()
    c0 = torch.zeros(4, 10)
    c1 = torch.nn.functional.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()
    with torch.no_grad():
        assert (tm(x, t) - tm(x, 1 - t)).abs().max() > 1e-4
        assert (cm(x, t, c0) - cm(x, t, c1)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="needs t"):
        tm(x)
    with pytest.raises(ValueError, match="needs c"):
        cm(x, t)


def test_config_validation_and_roundtrip() -> None:
    cfg = UNetConfig("class", 16, image_size=32)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    assert FlowUNet(cfg).eval()(torch.zeros(1, 1, 32, 32), torch.zeros(1), torch.zeros(1, 10)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError):
        UNetConfig("bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        UNetConfig("time", image_size=30)
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"conditioning": "time", "extra": 1})
