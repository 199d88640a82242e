"""IF engine on CUDA: the tiny pipeline through the default GPU path (fp16 variant, float16), and the real
IF-I-XL architecture with random fp16 weights for a few steps. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from models.diffusion.random_weights import (
    STAGE1_UNET_CONFIG,
    RandomPrompts,
    build_random_unet,
    find_config_dir,
    load_unet_config,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CONFIGS = find_config_dir()


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):
    from models.diffusion import load_stage1, load_stage2
    from models.diffusion.tiny import build_tiny_if, build_tiny_if_stage2

    root = tmp_path_factory.mktemp("tiny_if_cuda")
    s1 = load_stage1(build_tiny_if(root / "s1"), device="cuda")
    s2 = load_stage2(build_tiny_if_stage2(root / "s2"), device="cuda", stage1=s1)
    return s1, s2


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_default_cuda_load_is_fp16_variant(engines) -> None:
    s1, s2 = engines
    assert s1.unet.dtype == torch.float16 and s1.unet.device.type == "cuda" and s2.unet.dtype == torch.float16


def test_every_operation_runs_seeded_on_cuda(engines) -> None:
    from models.diffusion import anagram, denoise, get_view, hybrid, inpaint, sample, sdedit, upscale

    s1, s2 = engines
    img = torch.rand(1, 3, 32, 32, generator=gen(1)) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    a = sample(s1, "a dog", generator=gen(), stride=100)
    assert a.device.type == "cuda" and torch.equal(a, sample(s1, "a dog", generator=gen(), stride=100))
    out = inpaint(s1, img, mask, "a dog", generator=gen(), stride=100)
    keep = mask.expand_as(img).cuda() == 0
    assert torch.equal(out[keep], img.cuda()[keep])
    views = [get_view("identity"), get_view("jigsaw")]
    for x in (
        sdedit(s1, img, "a dog", i_start=5, generator=gen(), stride=100),
        anagram(s1, ["a", "b"], views, generator=gen(), stride=100),
        hybrid(s1, "a", "b", generator=gen(), stride=100),
        denoise(s1, img, 500, "iterative", generator=gen(), stride=100).denoised,
    ):
        assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()
    assert upscale(s2, a, "a dog", generator=gen(), steps=3).shape == (1, 3, 64, 64)


@pytest.mark.skipif(CONFIGS is None, reason="public IF configs not present (set IF_CONFIG_DIR)")
def test_real_architecture_random_fp16_steps() -> None:
    from diffusers import DDPMScheduler

    from models.diffusion import IFEngine, anagram, get_view, sample
    from models.diffusion.tiny import IF_I_SCHEDULER_CONFIG

    unet = build_random_unet(load_unet_config(STAGE1_UNET_CONFIG, CONFIGS), "cuda", torch.float16, seed=0)
    engine = IFEngine.from_components(unet, DDPMScheduler.from_config(IF_I_SCHEDULER_CONFIG), RandomPrompts(4096))
    assert engine.image_size == 64 and engine.dtype == torch.float16
    assert sum(p.numel() for p in unet.parameters()) == 4_304_695_110
    x = sample(engine, "a", generator=gen(), stride=330)
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()
    assert torch.equal(x, sample(engine, "a", generator=gen(), stride=330))
    y = anagram(engine, ["a", "b"], [get_view("identity"), get_view("rot90")], generator=gen(), stride=330)
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()
