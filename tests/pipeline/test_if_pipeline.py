"""The tiny random-weight IF pipelines: build, save, load through from_pretrained, run every operation (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.diffusion import (
    DenoiseMethod,
    IFEngine,
    ModelUnavailableError,
    Stage2Engine,
    anagram,
    center_crop_resize,
    denoise,
    get_view,
    hybrid,
    inpaint,
    load_stage1,
    load_stage2,
    resolve_precision,
    sample,
    sdedit,
    upscale,
)
from models.diffusion.text import EmbeddingCache
from models.diffusion.tiny import build_tiny_if

FAST = 100  # stride: 10 steps (900, 800, ..., 0) keeps each op well under a second


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engine(tiny_if_dirs: tuple[Path, Path]) -> IFEngine:
    return load_stage1(tiny_if_dirs[0], device="cpu")


@pytest.fixture(scope="module")
def stage2(tiny_if_dirs: tuple[Path, Path], engine: IFEngine) -> Stage2Engine:
    return load_stage2(tiny_if_dirs[1], device="cpu", stage1=engine)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def photo(seed: int = 1, size: tuple[int, int] = (32, 32)) -> Tensor:
    return torch.rand(1, 3, *size, generator=gen(seed)) * 2 - 1


class UNetCalls:
    """Counts UNet forward passes and their batch sizes."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.handle = unet.register_forward_pre_hook(lambda m, args: self.batches.append(args[0].shape[0]))

    def __enter__(self) -> UNetCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


# --- building and loading -----------------------------------------------------------------------------


def test_tiny_pipeline_has_the_real_layout_and_scheduler(tiny_if_dirs: tuple[Path, Path], engine: IFEngine) -> None:
    s1, s2 = tiny_if_dirs
    for d in (s1, s2):
        for f in (
            "model_index.json",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "text_encoder/model.fp16.safetensors",
            "tokenizer/spiece.model",
            "scheduler/scheduler_config.json",
        ):
            assert (d / f).is_file(), f
    assert (s2 / "image_noising_scheduler/scheduler_config.json").is_file()
    cfg = engine.unet.config
    assert cfg.out_channels == 6 and cfg.in_channels == 3 and engine.image_size == cfg.sample_size == 32
    assert "SimpleCrossAttnDownBlock2D" in cfg.down_block_types and cfg.encoder_hid_dim_type == "text_proj"
    sch = engine.scheduler.config
    assert (sch.beta_schedule, sch.variance_type, sch.thresholding, sch.sample_max_value) == (
        "squaredcos_cap_v2",
        "learned_range",
        True,
        1.5,
    )
    assert type(engine.text.text_encoder).__name__ == "T5EncoderModel"
    ids = engine.text.tokenizer(["a photo of a dog"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and ids[-1] == 0 and 1 in ids  # padded with <pad> = 0 after </s> = 1


def test_round_trip_through_diffusers_from_pretrained(
    tiny_if_dirs: tuple[Path, Path], engine: IFEngine, tmp_path: Path
) -> None:
    from diffusers import IFPipeline

    pipe = IFPipeline.from_pretrained(
        tiny_if_dirs[0],
        safety_checker=None,
        watermarker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    ours, theirs = engine.unet.state_dict(), pipe.unet.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the builder is deterministic in its seed, and the seed matters
    again = load_stage1(build_tiny_if(tmp_path / "again", seed=0), device="cpu").unet.state_dict()
    other = load_stage1(build_tiny_if(tmp_path / "other", seed=1), device="cpu").unet.state_dict()
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    assert not all(torch.equal(ours[k], other[k]) for k in ours)


def test_precision_policy() -> None:
    assert resolve_precision("cuda") == (torch.float16, "fp16")
    assert resolve_precision("cuda:1", torch.float32) == (torch.float32, None)
    assert resolve_precision("cpu") == (torch.float32, None)
    assert resolve_precision("cpu", torch.float16) == (torch.float16, "fp16")
    assert resolve_precision("cuda", variant=None) == (torch.float16, None)


def test_fp16_variant_loads(tiny_if_dirs: tuple[Path, Path], engine: IFEngine) -> None:
    half = load_stage1(tiny_if_dirs[0], device="cpu", dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.dtype == torch.float16
    assert half.text.text_encoder.dtype == torch.bfloat16  # a CPU-resident T5 runs in bfloat16, not float16
    w32 = engine.unet.state_dict()["conv_in.weight"]
    assert torch.equal(half.unet.state_dict()["conv_in.weight"], w32.half())
    offload = load_stage1(tiny_if_dirs[0], device="cpu", text_encoder_device="offload")
    torch.testing.assert_close(offload.encode(["a skull"]), engine.encode(["a skull"]))


def test_missing_or_unreachable_weights_explain_how_to_get_them(
    tmp_path: Path, tiny_if_dirs: tuple[Path, Path]
) -> None:
    with pytest.raises(ModelUnavailableError, match="IF_STAGE1_MODEL") as err:
        load_stage1(tmp_path / "nowhere", device="cpu")
    assert "license" in str(err.value) and "huggingface-cli login" in str(err.value)
    with pytest.raises(ModelUnavailableError, match="no such local directory"):
        load_stage1("not/a/hub/id", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="unet"):
        load_stage1(tmp_path / "empty", device="cpu")
    with pytest.raises(ModelUnavailableError, match="IF_STAGE2_MODEL"):
        load_stage2(tiny_if_dirs[0], device="cpu")  # a stage-I directory has no image_noising_scheduler
    assert issubclass(ModelUnavailableError, RuntimeError)


def test_gated_hub_errors_become_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ids are never resolved in tests (huggingface_hub contacts the network even with local_files_only);
    the wrapping of the error diffusers raises for a gated repo is checked with a stand-in loader."""
    from models.diffusion import engine as engine_module
    from models.diffusion.engine import _source

    monkeypatch.setattr(engine_module, "hub_unreachable", lambda: None)  # as if online
    src = _source("DeepFloyd/IF-I-XL-v1.0", "stage-I", "IF_STAGE1_MODEL", local_files_only=False)
    assert not src.local_files_only

    def gated(model: str, **kwargs: object) -> None:
        raise OSError("You are trying to access a gated repo.\nMake sure to have access to it.")

    with pytest.raises(ModelUnavailableError) as err:
        src.load(gated, "unet")
    text = str(err.value)
    assert "gated repo" in text and "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0" in text
    assert "IF_STAGE1_MODEL" in text and "local" in text


def test_an_unreachable_hub_fails_at_once_or_uses_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from models.diffusion import engine as engine_module
    from models.diffusion.engine import _source

    monkeypatch.setattr(engine_module, "hub_unreachable", lambda: "ConnectError: no route")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    with pytest.raises(ModelUnavailableError, match="unreachable from this machine") as err:
        _source("DeepFloyd/IF-I-XL-v1.0", "stage-I", "IF_STAGE1_MODEL", local_files_only=False)
    assert "not in the local cache" in str(err.value) and "IF_STAGE1_MODEL" in str(err.value)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: "/cache/unet/config.json")
    assert _source("DeepFloyd/IF-I-XL-v1.0", "stage-I", "IF_STAGE1_MODEL", local_files_only=False).local_files_only


def test_hub_probe_reports_an_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from models.diffusion.engine import hub_unreachable
    from tests.support import free_port

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert "ConnectError" in (hub_unreachable(timeout_s=2) or "")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_unreachable() == "HF_HUB_OFFLINE is set"


def test_each_prompt_is_embedded_once_and_can_persist(engine: IFEngine, tmp_path: Path) -> None:
    before = engine.cache.misses
    a = engine.encode(["An oil painting of a horse", ""])
    b = engine.encode(["an oil painting of a horse ", "", ""])
    assert engine.cache.misses - before <= 2 and a.shape == (2, 77, 32)
    torch.testing.assert_close(b[0], a[0])
    assert engine.encode(["a photo of a man"]).shape == (1, 77, 32)

    disk = EmbeddingCache(engine.text, namespace="tiny", cache_dir=tmp_path)
    first = disk(["a lithograph of waterfalls"])
    assert disk.misses == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1

    def no_t5(prompts: list[str]) -> Tensor:
        raise AssertionError("T5 must not run for a cached prompt")

    restarted = EmbeddingCache(no_t5, namespace="tiny", cache_dir=tmp_path)
    assert torch.equal(restarted(["a lithograph of waterfalls"]), first)
    other_model = EmbeddingCache(engine.text, namespace="another model", cache_dir=tmp_path)
    other_model(["a lithograph of waterfalls"])
    assert other_model.misses == 1


# --- operations ---------------------------------------------------------------------------------------


def test_sample_is_seeded_uses_one_batched_call_per_step(engine: IFEngine) -> None:
    steps: list[tuple[int, int]] = []
    with UNetCalls(engine.unet) as calls:
        a = sample(engine, "a photo of a dog", generator=gen(0), callback=lambda s, n, *_: steps.append((s, n)))
    assert calls.batches == [2] * 34  # default stride 30: 990..0, conditional + unconditional
    assert steps == [(i, 34) for i in range(1, 35)]
    b = sample(engine, "a photo of a dog", generator=gen(0))
    c = sample(engine, "a photo of a dog", generator=gen(1))
    assert a.shape == (1, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_callback_exception_cancels_an_operation(engine: IFEngine) -> None:
    class Cancelled(Exception):
        pass

    def cancel(step: int, total: int, *_: Tensor) -> None:
        if step == 3:
            raise Cancelled

    with UNetCalls(engine.unet) as calls, pytest.raises(Cancelled):
        sample(engine, "a skull", generator=gen(), callback=cancel, stride=FAST)
    assert len(calls.batches) == 3


def test_sdedit_starts_at_i_start_and_stays_close_when_started_late(engine: IFEngine) -> None:
    img = photo()
    with UNetCalls(engine.unet) as calls:
        out = sdedit(engine, img, "a pencil drawing", i_start=4, generator=gen(), stride=FAST)
    assert out.shape == (1, 3, 32, 32) and calls.batches == [2] * 6
    assert torch.equal(out, sdedit(engine, img, "a pencil drawing", i_start=4, generator=gen(), stride=FAST))
    late = sdedit(engine, img, "a pencil drawing", i_start=9, guidance=1.0, generator=gen(), stride=FAST)
    assert (late - img).abs().mean() < 0.05  # t = 0: only the final x0 estimate
    with pytest.raises(ValueError, match="i_start"):
        sdedit(engine, img, "x", i_start=10, generator=gen(), stride=FAST)


def test_sdedit_center_crops_web_images(engine: IFEngine) -> None:
    wide = photo(size=(40, 64))
    out = sdedit(engine, wide, "a photo", i_start=9, guidance=1.0, generator=gen(), stride=FAST)
    assert out.shape == (1, 3, 32, 32)
    assert (out - center_crop_resize(wide, 32)).abs().mean() < 0.05


def test_center_crop_resize() -> None:
    x = torch.zeros(1, 3, 20, 40)
    x[..., 10:30] = 1.0  # the central 20x20 square is white
    out = center_crop_resize(x, 8)
    assert out.shape == (1, 3, 8, 8) and torch.allclose(out, torch.ones_like(out))
    mask = (torch.rand(1, 1, 64, 48, generator=gen()) > 0.5).float()
    small = center_crop_resize(mask, 16, mode="nearest")
    assert small.shape == (1, 1, 16, 16) and set(small.unique().tolist()) <= {0.0, 1.0}


def test_inpaint_keeps_known_pixels_exactly(engine: IFEngine) -> None:
    img = photo()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1
    with UNetCalls(engine.unet) as calls:
        out = inpaint(engine, img, mask, "a rocket ship", generator=gen(), stride=FAST)
    assert calls.batches == [2] * 10
    keep = mask.expand_as(img) == 0
    assert torch.equal(out[keep], img[keep])
    assert (out[~keep] - img[~keep]).abs().mean() > 0.1
    assert torch.equal(out, inpaint(engine, img, mask, "a rocket ship", generator=gen(), stride=FAST))
    with pytest.raises(ValueError, match="binary"):
        inpaint(engine, img, mask * 0.5, "x", generator=gen(), stride=FAST)


def test_anagram_batches_every_view_and_prompt(engine: IFEngine) -> None:
    views = [get_view(n) for n in ("identity", "rot90", "negate", "jigsaw")]
    with UNetCalls(engine.unet) as calls:
        out = anagram(engine, ["a", "b", "c", "d"], views, generator=gen(), stride=FAST)
    assert out.shape == (1, 3, 32, 32) and calls.batches == [8] * 10
    pair = [get_view("identity"), get_view("flip_vertical")]
    a = anagram(engine, ["an old man", "a campfire"], pair, generator=gen(3), stride=FAST)
    assert torch.equal(a, anagram(engine, ["an old man", "a campfire"], pair, generator=gen(3), stride=FAST))
    with pytest.raises(ValueError, match="one prompt per view"):
        anagram(engine, ["only one"], pair, generator=gen(), stride=FAST)


def test_anagram_with_identity_views_and_one_prompt_is_sampling(engine: IFEngine) -> None:
    ident = [get_view("identity"), get_view("identity")]
    a = anagram(engine, ["a skull", "a skull"], ident, generator=gen(5), stride=FAST)
    b = sample(engine, "a skull", generator=gen(5), stride=FAST)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_hybrid_uses_three_branches_per_step(engine: IFEngine) -> None:
    with UNetCalls(engine.unet) as calls:
        out = hybrid(engine, "a skull", "waterfalls", generator=gen(), stride=FAST)
    assert out.shape == (1, 3, 32, 32) and calls.batches == [3] * 10
    same = hybrid(engine, "a skull", "waterfalls", generator=gen(), stride=FAST)
    other = hybrid(engine, "a skull", "waterfalls", kernel_size=5, sigma=1.0, generator=gen(), stride=FAST)
    assert torch.equal(out, same) and not torch.equal(out, other)
    with pytest.raises(ValueError):
        hybrid(engine, "a", "b", kernel_size=32, generator=gen())


@pytest.mark.parametrize("method", list(DenoiseMethod))
def test_denoise_methods(engine: IFEngine, method: DenoiseMethod) -> None:
    img = photo()
    seen: list[tuple[int, int]] = []
    result = denoise(
        engine, img, 500, method.value, generator=gen(), stride=FAST, callback=lambda s, n, *_: seen.append((s, n))
    )
    assert result.noisy.shape == result.denoised.shape == (1, 3, 32, 32)
    assert seen[-1][0] == seen[-1][1] == (6 if method is DenoiseMethod.ITERATIVE else 1)  # 500, 400, ..., 0
    again = denoise(engine, img, 500, method, generator=gen(), stride=FAST)
    assert torch.equal(result.noisy, again.noisy) and torch.equal(result.denoised, again.denoised)


def test_denoise_recovers_a_lightly_noised_image(engine: IFEngine) -> None:
    img = photo()
    result = denoise(engine, img, 10, "one_step", guidance=1.0, generator=gen())
    assert (result.denoised - img).abs().mean() < 0.05
    blurred = denoise(engine, img, 300, "blur", generator=gen(), blur_kernel_size=7, blur_sigma=3.0)
    assert blurred.denoised.std() < blurred.noisy.std()
    with pytest.raises(ValueError, match="valid: blur, one_step, iterative"):
        denoise(engine, img, 10, "magic", generator=gen())
    with pytest.raises(ValueError):
        denoise(engine, img, 1000, "blur", generator=gen())


def test_upscale_to_the_stage2_size(stage2: Stage2Engine, engine: IFEngine) -> None:
    small = sample(engine, "a rocket ship", generator=gen(), stride=FAST)
    assert stage2.encode(["a rocket ship"]).shape == (1, 77, 32) and stage2.cache is engine.cache
    with UNetCalls(stage2.unet) as calls:
        big = upscale(stage2, small, "a rocket ship", generator=gen(), steps=4)
    assert big.shape == (1, 3, 64, 64) and calls.batches == [2] * 4
    assert torch.equal(big, upscale(stage2, small, "a rocket ship", generator=gen(), steps=4))
    with pytest.raises(ValueError):
        upscale(stage2, small, "x", generator=gen(), steps=0)


def test_stage2_loads_its_own_text_encoder(tiny_if_dirs: tuple[Path, Path], engine: IFEngine) -> None:
    alone = load_stage2(tiny_if_dirs[1], device="cpu")
    assert alone.image_size == 64 and alone.noise_schedule.thresholding is False
    # same tiny T5 (same seed) as stage I
    torch.testing.assert_close(alone.encode(["a photo"]), engine.encode(["a photo"]))


# --- agreement with diffusers' own IF pipelines (same weights, same seed) ------------------------------


def test_sample_equals_diffusers_if_pipeline(tiny_if_dirs: tuple[Path, Path], engine: IFEngine) -> None:
    from diffusers import IFPipeline

    pipe = IFPipeline.from_pretrained(
        tiny_if_dirs[0],
        safety_checker=None,
        watermarker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "A photo of a dog",
        timesteps=list(range(900, -1, -FAST)),
        guidance_scale=7.0,
        generator=gen(4),
        output_type="pt",
        clean_caption=False,
    ).images
    ours = sample(engine, "A photo of a dog", generator=gen(4), stride=FAST)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


def test_upscale_equals_diffusers_super_resolution_pipeline(
    tiny_if_dirs: tuple[Path, Path], stage2: Stage2Engine
) -> None:
    from diffusers import IFSuperResolutionPipeline

    pipe = IFSuperResolutionPipeline.from_pretrained(
        tiny_if_dirs[1],
        safety_checker=None,
        watermarker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    small = photo()
    ref = pipe(
        image=small,
        prompt="a rocket",
        num_inference_steps=5,
        guidance_scale=4.0,
        noise_level=250,
        generator=gen(2),
        output_type="pt",
        clean_caption=False,
    ).images
    ours = upscale(stage2, small, "a rocket", generator=gen(2), steps=5)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


def test_operations_refuse_the_global_rng(engine: IFEngine) -> None:
    with pytest.raises(TypeError, match=r"seeded torch\.Generator"):
        sample(engine, "a dog", generator=None, stride=FAST)  # type: ignore[arg-type]
