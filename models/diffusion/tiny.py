"""Tiny random-weight DeepFloyd IF pipelines for tests, written with the real component classes.

``build_tiny_if(out_dir)`` writes an ``IFPipeline`` directory (model_index.json, unet/, scheduler/, tokenizer/,
text_encoder/) that ``load_stage1`` (and ``IFPipeline.from_pretrained``) load exactly like the real model:

- ``UNet2DConditionModel`` with IF-I-XL's block types (ResnetDownsample + SimpleCrossAttn blocks, text
  projection of the T5 states, scale-shift time conditioning, 6 output channels), shrunk to 2 levels;
- a 2-layer ``T5EncoderModel`` (gated-GELU, like T5 v1.1);
- a T5 tokenizer from a unigram sentencepiece model trained here on a few sentences (pad 0, eos 1, unk 2,
  100 sentinel tokens, like T5's);
- the real IF-I-XL scheduler config (cosine schedule, learned-range variance, dynamic thresholding).

Weights are saved in float32 (default files) and as the ``fp16`` variant, so both CPU and CUDA defaults load.
``build_tiny_if_stage2`` writes an ``IFSuperResolutionPipeline`` (6 input channels, noise-level class
embedding, image-noising scheduler) that doubles the stage-I size, with the same tokenizer and T5.

CLI: ``python -m models.diffusion.tiny OUT_DIR [--stage2 OUT_DIR2] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "IF_II_IMAGE_NOISING_SCHEDULER_CONFIG",
    "IF_II_SCHEDULER_CONFIG",
    "IF_I_SCHEDULER_CONFIG",
    "TINY_STAGE1_UNET",
    "TINY_STAGE2_UNET",
    "build_tiny_if",
    "build_tiny_if_stage2",
]

logger = logging.getLogger(__name__)

# The official IF-I-XL-v1.0 scheduler config, verbatim ("lambda_min_clipped" is ignored by DDPMScheduler).
IF_I_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.15.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.95,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.5,
    "thresholding": True,
    "trained_betas": None,
    "variance_type": "learned_range",
    "lambda_min_clipped": -5.1,
}

# IF-II-L-v1.0 schedulers (as reconstructed from diffusers' conversion script).
IF_II_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.95,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "thresholding": True,
    "trained_betas": None,
    "variance_type": "learned_range",
}
IF_II_IMAGE_NOISING_SCHEDULER_CONFIG: dict[str, Any] = {
    **IF_II_SCHEDULER_CONFIG,
    "dynamic_thresholding_ratio": 0.995,
    "thresholding": False,
    "variance_type": "fixed_small",
}

_TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}

# IF-I-XL's architecture (see ../shared/if_configs) with 2 levels of 16/32 channels at 32x32.
TINY_STAGE1_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 6,
    "layers_per_block": 1,
    "block_out_channels": [16, 32],
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "act_fn": "gelu",
    "attention_head_dim": 8,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 2,
    "cross_attention_dim": 32,
    "cross_attention_norm": "group_norm",
    "encoder_hid_dim": _TINY_T5["d_model"],
    "encoder_hid_dim_type": "text_proj",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_num_groups": 8,
    "resnet_time_scale_shift": "scale_shift",
    "time_embedding_type": "positional",
    "upcast_attention": False,
    "use_linear_projection": False,
}

# IF-II-L's architecture (6 input channels: x_t and the upscaled image; noise level as class embedding).
TINY_STAGE2_UNET: dict[str, Any] = {
    **TINY_STAGE1_UNET,
    "sample_size": 64,
    "in_channels": 6,
    "class_embed_type": "timestep",
    "resnet_skip_time_act": True,
    "time_embedding_act_fn": "gelu",
    "time_embedding_dim": 64,
    "mid_block_scale_factor": 1.4142271248762552,
    "resnet_out_scale_factor": 1.4142271248762552,
}

_CORPUS = [
    "a high quality photo",
    "a photo of a dog",
    "a photo of a man",
    "a pencil drawing of a skull",
    "an oil painting of an old man",
    "an oil painting of people around a campfire",
    "an oil painting of a snowy mountain village",
    "a lithograph of waterfalls",
    "a lithograph of a skull",
    "a watercolor of a rocket ship",
    "a rocket ship in space",
    "a photo of the amalfi coast",
    "a photo of a hipster barista",
    "a man wearing a hat",
    "an ink drawing of a horse",
    "a painting of a rabbit and a duck",
]


def _tokenizer(directory: Path) -> Any:
    """Train a small unigram sentencepiece model with T5's special ids and load it as a T5 tokenizer."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4),
        model_writer=buf,
        vocab_size=96,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spiece.model").write_bytes(buf.getvalue())
    return T5Tokenizer.from_pretrained(str(directory), model_max_length=77, local_files_only=True)


def _text_encoder(vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new",
        is_gated_act=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
        **_TINY_T5,
    )
    return T5EncoderModel(config).eval()


def _save_fp16(module: Any, directory: Path) -> None:
    module.to(torch.float16).save_pretrained(str(directory), variant="fp16")
    module.to(torch.float32)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' notices while building (an empty "keep in float32" list, a missing optional
    image backend, shard-writing progress bars): the builder's one line is what matters."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not its tqdm class
    libraries = (diffusers_logging, transformers_logging)
    levels = [lib.get_verbosity() for lib in libraries]
    bars = [lib.is_progress_bar_enabled() for lib in libraries]
    bars_were_off = hub_tqdm.are_progress_bars_disabled()
    for lib in libraries:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    hub_tqdm.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lib, level, bar in zip(libraries, levels, bars, strict=True):
            lib.set_verbosity(level)
            if bar:
                lib.enable_progress_bar()
        if not bars_were_off:
            hub_tqdm.enable_progress_bars()


def _build(out_dir: str | os.PathLike[str], *, seed: int, stage: int) -> Path:
    with _quiet():
        out = _write(Path(out_dir), seed=seed, stage=stage)
    logger.info("wrote tiny IF stage-%d pipeline to %s", stage, out)
    return out


def _write(out: Path, *, seed: int, stage: int) -> Path:
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(out / "tokenizer")
    with torch.random.fork_rng(devices=[]):  # module init uses the global RNG: seed it without leaking state
        torch.manual_seed(seed)
        text_encoder = _text_encoder(len(tokenizer))
        unet = UNet2DConditionModel(**(TINY_STAGE1_UNET if stage == 1 else TINY_STAGE2_UNET)).eval()
    common = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "unet": unet,
        "safety_checker": None,
        "feature_extractor": None,
        "watermarker": None,
        "requires_safety_checker": False,
    }
    if stage == 1:
        pipe = IFPipeline(scheduler=DDPMScheduler.from_config(IF_I_SCHEDULER_CONFIG), **common)
    else:
        pipe = IFSuperResolutionPipeline(
            scheduler=DDPMScheduler.from_config(IF_II_SCHEDULER_CONFIG),
            image_noising_scheduler=DDPMScheduler.from_config(IF_II_IMAGE_NOISING_SCHEDULER_CONFIG),
            **common,
        )
    _save_fp16(unet, out / "unet")
    _save_fp16(text_encoder, out / "text_encoder")
    # float32 files last, so the saved configs describe the default (float32) weights
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def build_tiny_if(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random-weight IF stage-I pipeline (32x32) to ``out_dir``; returns the directory."""
    return _build(out_dir, seed=seed, stage=1)


def build_tiny_if_stage2(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a tiny random-weight IF stage-II pipeline (upscales to 64x64) to ``out_dir``; returns it."""
    return _build(out_dir, seed=seed, stage=2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory for the stage-I pipeline")
    parser.add_argument("--stage2", metavar="OUT_DIR2", help="also write a stage-II pipeline here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_tiny_if(args.out_dir, seed=args.seed)
    if args.stage2:
        build_tiny_if_stage2(args.stage2, seed=args.seed)


if __name__ == "__main__":
    main()
