"""Random-weight IF UNets from configs: seeded in-place init, config lookup, prompt stand-in, and the real
IF-I-XL / IF-II-L architectures checked against the adapters on the meta device (no memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.diffusion.adapter import IFAdapter, IFSuperResAdapter
from models.diffusion.random_weights import (
    CONFIG_DIR_ENV,
    STAGE1_UNET_CONFIG,
    STAGE2_UNET_CONFIG,
    RandomPrompts,
    build_random_unet,
    find_config_dir,
    load_unet_config,
)
from models.diffusion.tiny import TINY_STAGE1_UNET

CONFIGS = find_config_dir()


def test_in_place_init_is_seeded_and_scaled_by_fan_in() -> None:
    a = build_random_unet(TINY_STAGE1_UNET, "cpu", torch.float32, seed=0)
    b = build_random_unet(TINY_STAGE1_UNET, "cpu", torch.float32, seed=0)
    c = build_random_unet(TINY_STAGE1_UNET, "cpu", torch.float32, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    w = a.conv_in.weight
    assert abs(float(w.std()) - 1 / (w[0].numel() ** 0.5)) < 0.05
    assert torch.equal(a.conv_norm_out.weight, torch.ones_like(a.conv_norm_out.weight))
    assert torch.equal(a.conv_in.bias, torch.zeros_like(a.conv_in.bias))
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_random_unet_output_stays_of_order_one() -> None:
    unet = build_random_unet(TINY_STAGE1_UNET, "cpu", torch.float32, seed=0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = unet(x, torch.tensor([500, 500]), encoder_hidden_states=RandomPrompts(32)(["a", "b"])).sample
    assert out.shape == (2, 6, 32, 32) and torch.isfinite(out).all()
    assert 0.05 < float(out.std()) < 20


def test_random_prompts_are_seeded_per_prompt() -> None:
    text = RandomPrompts(dim=16, length=5)
    e = text(["a dog", "a cat", "a dog"])
    assert e.shape == (3, 5, 16) and e.dtype == torch.float32
    assert torch.equal(e[0], e[2]) and not torch.equal(e[0], e[1])
    assert torch.equal(text(["a cat"])[0], e[1])


def test_config_lookup_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / STAGE1_UNET_CONFIG).write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 64}))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert find_config_dir() == tmp_path
    assert load_unet_config(STAGE1_UNET_CONFIG) == {"sample_size": 64}
    with pytest.raises(FileNotFoundError, match=CONFIG_DIR_ENV):
        load_unet_config(STAGE2_UNET_CONFIG)


@pytest.mark.skipif(CONFIGS is None, reason="public IF configs not present")
def test_real_architectures_match_the_adapters_on_the_meta_device() -> None:
    """IF-I-XL (4.3B) and IF-II-L (1.2B) from their public configs, without memory: counts and shapes."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**load_unet_config(STAGE1_UNET_CONFIG, CONFIGS)).half()
        assert sum(p.numel() for p in unet.parameters()) == 4_304_695_110
        out = IFAdapter(unet)(torch.empty(4, 3, 64, 64), 500, torch.empty(4, 77, 4096))
        assert out.eps.shape == out.v.shape == (4, 3, 64, 64) and out.eps.dtype == torch.float32
        unet2 = UNet2DConditionModel(**load_unet_config(STAGE2_UNET_CONFIG, CONFIGS)).half()
        assert sum(p.numel() for p in unet2.parameters()) == 1_243_277_190
        out2 = IFSuperResAdapter(unet2)(
            torch.empty(2, 3, 256, 256),
            500,
            torch.empty(2, 77, 4096),
            image=torch.empty(2, 3, 256, 256),
            noise_level=torch.full((2,), 250),
        )
        assert out2.eps.shape == out2.v.shape == (2, 3, 256, 256)
