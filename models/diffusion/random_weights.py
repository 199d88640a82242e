"""Same-architecture IF UNets with random weights, built from the public configs: no weights, no hub.

For speed and memory measurements and shape checks (``bench/bench_if.py``, ``tests/gpu``). The public DeepFloyd
configs (``IF-I-XL-v1.0_unet_config.json``: 4,304,695,110 parameters; ``IF-II-L-v1.0_unet_config.json``:
1,243,277,190) are looked up in ``$IF_CONFIG_DIR``, then ``<repo>/shared/if_configs``, then
``<repo>/../shared/if_configs``.

A UNet is constructed on the meta device (no memory, seconds for 4.3B parameters), materialized with
``to_empty`` on the target device and dtype, and initialized in place from a seeded generator on that device:
matrices and kernels ``N(0, 1/fan_in)`` (activations stay of order 1 through the depth), norm scales 1, biases 0.
Prompt embeddings come from ``RandomPrompts``: ``prompts -> (B, L, D)`` seeded by a hash of each prompt, the
shape T5 v1.1 XXL gives (L = 77, D = 4096). ``build_random_t5_encoder`` builds IF's T5 v1.1 XXL encoder
(``IF-I-XL-v1.0_text_encoder_config.json``: 4,762,310,656 parameters) the same way, for the T5 placements.
``forward_flops`` counts a UNet forward on the meta device (IF-I-XL at 64x64: 2.879 TFLOP per image).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CONFIG_DIR_ENV",
    "STAGE1_UNET_CONFIG",
    "STAGE2_UNET_CONFIG",
    "T5_ENCODER_CONFIG",
    "RandomPrompts",
    "build_random_t5_encoder",
    "build_random_unet",
    "find_config_dir",
    "forward_flops",
    "init_in_place",
    "load_unet_config",
]

CONFIG_DIR_ENV = "IF_CONFIG_DIR"
STAGE1_UNET_CONFIG = "IF-I-XL-v1.0_unet_config.json"
STAGE2_UNET_CONFIG = "IF-II-L-v1.0_unet_config.json"
T5_ENCODER_CONFIG = "IF-I-XL-v1.0_text_encoder_config.json"
_ROOT = Path(__file__).resolve().parents[2]


def find_config_dir() -> Path | None:
    """The first folder of ``$IF_CONFIG_DIR``, ``<repo>/shared/if_configs``, ``<repo>/../shared/if_configs``
    that holds the stage-I UNet config; None when none does."""
    env = os.environ.get(CONFIG_DIR_ENV)
    candidates = [Path(env)] if env else []
    candidates += [_ROOT / "shared" / "if_configs", _ROOT.parent / "shared" / "if_configs"]
    return next((c for c in candidates if (c / STAGE1_UNET_CONFIG).is_file()), None)


def load_unet_config(name: str, config_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments from a public config file (``_``-prefixed keys dropped)."""
    folder = Path(config_dir) if config_dir is not None else find_config_dir()
    if folder is None or not (folder / name).is_file():
        raise FileNotFoundError(
            f"{name} not found (looked in {folder or 'the default places'}): set {CONFIG_DIR_ENV} to the folder "
            "with the public IF configs (../shared/if_configs beside the checkout)"
        )
    return {k: v for k, v in json.loads((folder / name).read_text()).items() if not k.startswith("_")}


@torch.no_grad()
def init_in_place(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded random weights after ``to_empty``: N(0, 1/fan_in) matrices and kernels, unit norm scales, zero
    biases. ``generator`` lives on the parameters' device."""
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=generator)
        elif name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.zero_()


def build_random_unet(
    config: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.nn.Module:
    """``UNet2DConditionModel(**config)`` on the meta device, ``to_empty`` on ``device`` in ``dtype``, seeded
    in-place init; returned in eval mode without gradients."""
    from diffusers import UNet2DConditionModel

    device = torch.device(device)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to(dtype=dtype).to_empty(device=device)
    init_in_place(unet, torch.Generator(device=device).manual_seed(seed))
    return unet.eval().requires_grad_(False)


def build_random_t5_encoder(
    config: dict[str, Any], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.nn.Module:
    """``T5EncoderModel(T5Config(**config))`` built like ``build_random_unet`` (meta device, ``to_empty``, seeded
    in-place init); in eval mode without gradients. ``config``: e.g. ``load_unet_config(T5_ENCODER_CONFIG)``."""
    from transformers import T5Config, T5EncoderModel

    device = torch.device(device)
    keep = {"architectures", "model_type", "torch_dtype", "transformers_version"}
    t5_config = T5Config(**{k: v for k, v in config.items() if not k.startswith("_") and k not in keep})
    with torch.device("meta"):
        encoder = T5EncoderModel(t5_config)
    encoder = encoder.to(dtype=dtype).to_empty(device=device)
    encoder.set_input_embeddings(encoder.shared)  # to_empty gives the tied token embeddings a tensor each: re-tie
    init_in_place(encoder, torch.Generator(device=device).manual_seed(seed))
    return encoder.eval().requires_grad_(False)


def forward_flops(config: dict[str, Any], batch: int = 1, text_length: int = 77) -> int:
    """Floating-point operations of one ``UNet2DConditionModel(**config)`` forward on ``batch`` images at its
    ``sample_size`` with ``text_length`` prompt tokens, counted by ``torch.utils.flop_counter.FlopCounterMode`` on
    the meta device (matrix products, convolutions and attention; no memory, no weights)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    size = config.get("sample_size", 64)
    h, w = (size, size) if isinstance(size, int) else size
    width = config.get("encoder_hid_dim") or config["cross_attention_dim"]
    with torch.device("meta"), torch.no_grad():
        unet = UNet2DConditionModel(**config).eval()
        x = torch.empty(batch, config.get("in_channels", 4), h, w)
        kwargs = {"class_labels": torch.zeros(batch, dtype=torch.long)} if config.get("class_embed_type") else {}
        counter = FlopCounterMode(display=False)
        with counter:
            unet(
                x,
                torch.zeros(batch, dtype=torch.long),
                encoder_hidden_states=torch.empty(batch, text_length, width),
                return_dict=False,
                **kwargs,
            )
    return int(counter.get_total_flops())


class RandomPrompts:
    """Stand-in for T5: ``prompts -> (B, length, dim)`` float32 on the CPU, seeded by a hash of each prompt, so
    the same prompt always gets the same embedding."""

    def __init__(self, dim: int, length: int = 77) -> None:
        self.dim, self.length = dim, length

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
            out.append(torch.randn(self.length, self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out)
