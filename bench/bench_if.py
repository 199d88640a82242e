"""Time every IF operation per denoising step on a random-weight UNet with the real IF architecture.

On a CUDA machine (default): the IF-I-XL stage-I UNet (4.3B parameters) and the IF-II-L stage-II UNet (1.2B)
are built from their public configs (``../shared/if_configs``) on the meta device, materialized on the GPU in
float16 with ``to_empty`` and initialized in place with a seeded generator (no weights, no hub). Prompt
embeddings are seeded random (B, 77, 4096) tensors (T5 is not part of a step). Each operation runs once to
warm up at a coarse stride, then once timed with ``torch.cuda.synchronize``; the table gives the UNet batch per
step, the number of steps, the wall time, the time per step and the peak GPU memory.

``--tiny`` swaps in the tiny test UNets (``models.diffusion.tiny``) so the script can be checked on a CPU.

    python bench/bench_if.py                       # CUDA, real architecture, fp16
    python bench/bench_if.py --tiny --device cpu   # a quick check that everything runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.diffusion import (  # noqa: E402
    IFEngine,
    Stage2Engine,
    anagram,
    denoise,
    get_view,
    hybrid,
    inpaint,
    sample,
    sdedit,
    upscale,
)
from models.diffusion.tiny import (  # noqa: E402
    IF_I_SCHEDULER_CONFIG,
    IF_II_IMAGE_NOISING_SCHEDULER_CONFIG,
    IF_II_SCHEDULER_CONFIG,
    TINY_STAGE1_UNET,
    TINY_STAGE2_UNET,
)

logger = logging.getLogger("bench_if")
DEFAULT_CONFIG_DIR = ROOT.parent / "shared" / "if_configs"


class RandomPrompts:
    """Stand-in for T5: ``prompts -> (B, L, D)`` seeded by a hash of each prompt (CPU, float32)."""

    def __init__(self, dim: int, length: int = 77) -> None:
        self.dim, self.length = dim, length

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
            g = torch.Generator().manual_seed(seed)
            out.append(torch.randn(self.length, self.dim, generator=g))
        return torch.stack(out)


@torch.no_grad()
def init_in_place(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights after ``to_empty``: N(0, 1/fan_in) matrices and kernels, unit norm scales, zero biases."""
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()), generator=generator)
        elif name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.zero_()


def build_unet(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """UNet2DConditionModel from a config: meta device, ``to_empty`` on ``device``, seeded in-place init."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    unet = unet.to(dtype=dtype).to_empty(device=device)
    init_in_place(unet, torch.Generator(device=device).manual_seed(seed))
    return unet.eval().requires_grad_(False)


def load_config(config_dir: Path, name: str) -> dict[str, Any]:
    path = config_dir / name
    if not path.is_file():
        raise SystemExit(f"missing {path}: pass --config-dir pointing at the public IF configs")
    return json.loads(path.read_text())


def engines(args: argparse.Namespace, device: torch.device,
            dtype: torch.dtype) -> tuple[IFEngine, Stage2Engine | None]:
    from diffusers import DDPMScheduler

    if args.tiny:
        cfg1, cfg2 = dict(TINY_STAGE1_UNET), dict(TINY_STAGE2_UNET)
    else:
        cfg1 = load_config(args.config_dir, "IF-I-XL-v1.0_unet_config.json")
        cfg2 = load_config(args.config_dir, "IF-II-L-v1.0_unet_config.json")
    unet1 = build_unet(cfg1, device, dtype, args.seed)
    text = RandomPrompts(int(cfg1["encoder_hid_dim"]))
    stage1 = IFEngine.from_components(unet1, DDPMScheduler.from_config(IF_I_SCHEDULER_CONFIG), text,
                                      name="bench-stage1")
    stage2 = None
    if not args.no_stage2:
        unet2 = build_unet(cfg2, device, dtype, args.seed + 1)
        stage2 = Stage2Engine.from_components(
            unet2, DDPMScheduler.from_config(IF_II_SCHEDULER_CONFIG), RandomPrompts(int(cfg2["encoder_hid_dim"])),
            name="bench-stage2",
            image_noising_scheduler=DDPMScheduler.from_config(IF_II_IMAGE_NOISING_SCHEDULER_CONFIG))
    return stage1, stage2


Run = Callable[[torch.Generator, int, Callable[..., None]], Tensor]


def operations(stage1: IFEngine, stage2: Stage2Engine | None, upscale_steps: int) -> dict[str, tuple[int, Run]]:
    """name -> (UNet batch per step, run(generator, stride, callback)); stage II uses 1000 // stride steps,
    or ``upscale_steps`` at the default stride 30."""
    S = stage1.image_size
    g0 = torch.Generator().manual_seed(0)
    photo = torch.rand(1, 3, S, S, generator=g0) * 2 - 1
    mask = torch.zeros(1, 1, S, S)
    mask[..., S // 4: 3 * S // 4, S // 4: 3 * S // 4] = 1
    v2 = [get_view("identity"), get_view("flip_vertical")]
    v4 = [get_view(n) for n in ("identity", "rot90", "negate", "jigsaw")]
    p = "an oil painting of a snowy mountain village"
    ops: dict[str, tuple[int, Run]] = {
        "sample": (2, lambda g, s, cb: sample(stage1, p, generator=g, stride=s, callback=cb)),
        "sdedit (i_start 10)": (2, lambda g, s, cb: sdedit(stage1, photo, p, i_start=min(10, 990 // s),
                                                          generator=g, stride=s, callback=cb)),
        "inpaint": (2, lambda g, s, cb: inpaint(stage1, photo, mask, p, generator=g, stride=s, callback=cb)),
        "anagram (2 views)": (4, lambda g, s, cb: anagram(stage1, [p, "a skull"], v2, generator=g, stride=s,
                                                          callback=cb)),
        "anagram (4 views)": (8, lambda g, s, cb: anagram(stage1, [p, "a skull", "a dog", "a horse"], v4,
                                                          generator=g, stride=s, callback=cb)),
        "hybrid": (3, lambda g, s, cb: hybrid(stage1, "a skull", "waterfalls", generator=g, stride=s,
                                              callback=cb)),
        "denoise one_step (t=500)": (2, lambda g, s, cb: denoise(stage1, photo, 500, "one_step", generator=g,
                                                                 stride=s, callback=cb).denoised),
        "denoise iterative (t=690)": (2, lambda g, s, cb: denoise(stage1, photo, 690, "iterative", generator=g,
                                                                  stride=s, callback=cb).denoised),
        "denoise blur (t=500)": (0, lambda g, s, cb: denoise(stage1, photo, 500, "blur", generator=g, stride=s,
                                                             callback=cb).denoised),
    }
    if stage2 is not None:
        def up(g: torch.Generator, s: int, cb: Callable[..., None]) -> Tensor:
            steps = upscale_steps if s == 30 else max(1, 1000 // s)
            return upscale(stage2, photo, p, generator=g, steps=steps, callback=cb)

        ops[f"upscale {S}->{stage2.image_size} (stage II)"] = (2, up)
    return ops


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test UNets instead of the real architecture")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                        help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR)
    parser.add_argument("--stride", type=int, default=30, help="timestep stride (30: 34 steps)")
    parser.add_argument("--upscale-steps", type=int, default=50)
    parser.add_argument("--no-stage2", action="store_true", help="skip the stage-II upscaler")
    parser.add_argument("--ops", nargs="*", default=None, help="substrings of operation names to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    stage1, stage2 = engines(args, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    n1 = sum(p.numel() for p in stage1.unet.parameters())
    n2 = sum(p.numel() for p in stage2.unet.parameters()) if stage2 is not None else 0
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    logger.info("built UNets in %.1fs: stage I %.3fB params, stage II %.3fB params", build_s, n1 / 1e9, n2 / 1e9)

    rows: list[dict[str, Any]] = []
    for name, (batch, run) in operations(stage1, stage2, args.upscale_steps).items():
        if args.ops and not any(s in name for s in args.ops):
            continue
        run(torch.Generator().manual_seed(args.seed), 330, lambda *a: None)  # warm-up at a coarse stride
        steps: list[int] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        out = run(torch.Generator().manual_seed(args.seed), args.stride, lambda s, n, x: steps.append(s))
        sync(device)
        wall = time.perf_counter() - t
        n = max(len(steps), 1)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        rows.append({"op": name, "unet_batch": batch, "steps": len(steps), "seconds": wall,
                     "ms_per_step": 1000 * wall / n, "peak_gib": peak, "finite": bool(torch.isfinite(out).all())})
        logger.info("%s: %d steps in %.3fs", name, len(steps), wall)

    arch = "tiny test UNets" if args.tiny else "IF-I-XL (4.3B) / IF-II-L (1.2B) architecture, random weights"
    print(f"\n### IF operations per step: {card}, {str(dtype).removeprefix('torch.')}, {arch}\n")
    print(f"torch {torch.__version__}; stage I {n1:,} params at {stage1.image_size}x{stage1.image_size}"
          + (f"; stage II {n2:,} params at {stage2.image_size}x{stage2.image_size}" if stage2 else "")
          + f"; stride {args.stride}; build {build_s:.1f}s; peak memory includes both resident UNets\n")
    print("| operation | UNet batch / step | steps | total (s) | per step (ms) | peak GPU memory (GiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak = "n/a" if math.isnan(r["peak_gib"]) else f"{r['peak_gib']:.1f}"
        print(f"| {r['op']} | {r['unet_batch']} | {r['steps']} | {r['seconds']:.3f} | {r['ms_per_step']:.1f} "
              f"| {peak} |")
    if args.json:
        args.json.write_text(json.dumps({"card": card, "dtype": str(dtype), "tiny": args.tiny, "rows": rows},
                                        indent=2))
    return rows


if __name__ == "__main__":
    main()
