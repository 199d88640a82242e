"""Time every IF operation per denoising step on a random-weight UNet with the real IF architecture.

On a CUDA machine (default): the IF-I-XL stage-I UNet (4.3B parameters) and the IF-II-L stage-II UNet (1.2B)
are built from their public configs (``../shared/if_configs``) on the meta device, materialized on the GPU in
float16 with ``to_empty`` and initialized in place with a seeded generator (no weights, no hub). Prompt
embeddings are seeded random (B, 77, 4096) tensors (T5 is not part of a step). Each operation runs once to
warm up at a coarse stride, then once timed with ``torch.cuda.synchronize``; the table gives the UNet batch per
step, the number of steps, the wall time, the time per step and the peak memory (GPU: the allocator's peak
during the timed run, both UNets resident; CPU: the process's peak RSS so far).

``--tiny`` swaps in the tiny test UNets (``models.diffusion.tiny``) so the script can be checked on a CPU.
The builders and the config lookup are in ``models.diffusion.random_weights``.

    python bench/bench_if.py                       # CUDA, real architecture, fp16
    python bench/bench_if.py --tiny --device cpu   # a quick check that everything runs
    python bench/bench_if.py --device cpu --dtype bfloat16 --no-stage2 --no-warmup --stride 330   # real, CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from collections.abc import Callable
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
from models.diffusion.random_weights import (  # noqa: E402
    STAGE1_UNET_CONFIG,
    STAGE2_UNET_CONFIG,
    RandomPrompts,
    build_random_unet,
    load_unet_config,
)
from models.diffusion.tiny import (  # noqa: E402
    IF_I_SCHEDULER_CONFIG,
    IF_II_IMAGE_NOISING_SCHEDULER_CONFIG,
    IF_II_SCHEDULER_CONFIG,
    TINY_STAGE1_UNET,
    TINY_STAGE2_UNET,
)

logger = logging.getLogger("bench_if")


def engines(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[IFEngine, Stage2Engine | None]:
    from diffusers import DDPMScheduler

    if args.tiny:
        cfg1, cfg2 = dict(TINY_STAGE1_UNET), dict(TINY_STAGE2_UNET)
    else:
        try:
            cfg1 = load_unet_config(STAGE1_UNET_CONFIG, args.config_dir)
            cfg2 = load_unet_config(STAGE2_UNET_CONFIG, args.config_dir)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
    unet1 = build_random_unet(cfg1, device, dtype, args.seed)
    text = RandomPrompts(int(cfg1["encoder_hid_dim"]))
    stage1 = IFEngine.from_components(
        unet1, DDPMScheduler.from_config(IF_I_SCHEDULER_CONFIG), text, name="bench-stage1"
    )
    stage2 = None
    if not args.no_stage2:
        unet2 = build_random_unet(cfg2, device, dtype, args.seed + 1)
        stage2 = Stage2Engine.from_components(
            unet2,
            DDPMScheduler.from_config(IF_II_SCHEDULER_CONFIG),
            RandomPrompts(int(cfg2["encoder_hid_dim"])),
            name="bench-stage2",
            image_noising_scheduler=DDPMScheduler.from_config(IF_II_IMAGE_NOISING_SCHEDULER_CONFIG),
        )
    return stage1, stage2


Run = Callable[[torch.Generator, int, Callable[..., None]], Tensor]


def operations(stage1: IFEngine, stage2: Stage2Engine | None, upscale_steps: int) -> dict[str, tuple[int, Run]]:
    """name -> (UNet batch per step, run(generator, stride, callback)); SDEdit starts at the strided timestep
    nearest t = 690 (i_start 10 at stride 30); stage II uses 1000 // stride steps, or ``upscale_steps`` at the
    default stride 30."""
    S = stage1.image_size
    g0 = torch.Generator().manual_seed(0)
    photo = torch.rand(1, 3, S, S, generator=g0) * 2 - 1
    mask = torch.zeros(1, 1, S, S)
    mask[..., S // 4 : 3 * S // 4, S // 4 : 3 * S // 4] = 1
    v2 = [get_view("identity"), get_view("flip_vertical")]
    v4 = [get_view(n) for n in ("identity", "rot90", "negate", "jigsaw")]
    p = "an oil painting of a snowy mountain village"
    ops: dict[str, tuple[int, Run]] = {
        "sample": (2, lambda g, s, cb: sample(stage1, p, generator=g, stride=s, callback=cb)),
        "sdedit (from t=690)": (
            2,
            lambda g, s, cb: sdedit(stage1, photo, p, i_start=round(300 / s), generator=g, stride=s, callback=cb),
        ),
        "inpaint": (2, lambda g, s, cb: inpaint(stage1, photo, mask, p, generator=g, stride=s, callback=cb)),
        "anagram (2 views)": (
            4,
            lambda g, s, cb: anagram(stage1, [p, "a skull"], v2, generator=g, stride=s, callback=cb),
        ),
        "anagram (4 views)": (
            8,
            lambda g, s, cb: anagram(
                stage1, [p, "a skull", "a dog", "a horse"], v4, generator=g, stride=s, callback=cb
            ),
        ),
        "hybrid": (3, lambda g, s, cb: hybrid(stage1, "a skull", "waterfalls", generator=g, stride=s, callback=cb)),
        "denoise one_step (t=500)": (
            2,
            lambda g, s, cb: denoise(stage1, photo, 500, "one_step", generator=g, stride=s, callback=cb).denoised,
        ),
        "denoise iterative (t=690)": (
            2,
            lambda g, s, cb: denoise(stage1, photo, 690, "iterative", generator=g, stride=s, callback=cb).denoised,
        ),
        "denoise blur (t=500)": (
            0,
            lambda g, s, cb: denoise(stage1, photo, 500, "blur", generator=g, stride=s, callback=cb).denoised,
        ),
    }
    if stage2 is not None:

        def up(g: torch.Generator, s: int, cb: Callable[..., None]) -> Tensor:
            steps = upscale_steps if s == 30 else max(1, 1000 // s)
            return upscale(stage2, photo, p, generator=g, steps=steps, callback=cb)

        ops[f"upscale {S}->{stage2.image_size} (stage II)"] = (2, up)
    return ops


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny test UNets instead of the real architecture")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="default: float16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="public IF configs (default: $IF_CONFIG_DIR, ./shared/if_configs, ../shared/if_configs)",
    )
    parser.add_argument("--stride", type=int, default=30, help="timestep stride (30: 34 steps)")
    parser.add_argument("--upscale-steps", type=int, default=50)
    parser.add_argument("--no-stage2", action="store_true", help="skip the stage-II upscaler")
    parser.add_argument("--ops", nargs="*", default=None, help="substrings of operation names to run")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up run of each operation (CPU runs of the real architecture)",
    )
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
        if not args.no_warmup:
            run(torch.Generator().manual_seed(args.seed), 330, lambda *a: None)  # warm-up at a coarse stride
        steps: list[int] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        out = run(torch.Generator().manual_seed(args.seed), args.stride, lambda s, n, *_, steps=steps: steps.append(s))
        sync(device)
        wall = time.perf_counter() - t
        n = max(len(steps), 1)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_rss_gib()
        rows.append(
            {
                "op": name,
                "unet_batch": batch,
                "steps": len(steps),
                "seconds": wall,
                "ms_per_step": 1000 * wall / n,
                "peak_gib": peak,
                "finite": bool(torch.isfinite(out).all()),
            }
        )
        logger.info("%s: %d steps in %.3fs", name, len(steps), wall)

    arch = "tiny test UNets" if args.tiny else "IF-I-XL (4.3B) / IF-II-L (1.2B) architecture, random weights"
    print(f"\n### IF operations per step: {card}, {str(dtype).removeprefix('torch.')}, {arch}\n")
    print(
        f"torch {torch.__version__}; stage I {n1:,} params at {stage1.image_size}x{stage1.image_size}"
        + (f"; stage II {n2:,} params at {stage2.image_size}x{stage2.image_size}" if stage2 else "")
        + f"; stride {args.stride}; build {build_s:.1f}s; peak memory includes both resident UNets\n"
    )
    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "peak process RSS (GiB)"
    print(f"| operation | UNet batch / step | steps | total (s) | per step (ms) | {memory} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['op']} | {r['unet_batch']} | {r['steps']} | {r['seconds']:.3f} | {r['ms_per_step']:.1f} "
            f"| {r['peak_gib']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"card": card, "dtype": str(dtype), "tiny": args.tiny, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
