"""Time every IF operation per denoising step, and one UNet call per batch bucket, in each fast-path mode, on
random-weight UNets with the real IF architecture; and the T5 placements with their peak memory.

On a CUDA machine (default): the IF-I-XL stage-I UNet (4.3B parameters) and the IF-II-L stage-II UNet (1.2B)
are built from their public configs (``../shared/if_configs``) on the meta device, materialized on the GPU in
float16 with ``to_empty`` and initialized in place with a seeded generator (no weights, no hub). Prompt
embeddings are seeded random (B, 77, 4096) tensors (T5 is not part of a step).

``--modes`` lists the fast-path modes to measure one after the other in this process (``models.diffusion.fast``):
``off`` (eager), ``default`` (torch.compile), ``reduce-overhead`` (compiled + one CUDA graph per bucket),
``max-autotune``; ``+cl`` adds channels-last (``off+cl``). Each mode is warmed up with ``accelerate`` (the warm-up
time is reported; ``--warmup-timeout`` bounds it as the worker does). Then, per mode:

- with ``--unet-buckets``: one UNet call per bucket (``--buckets``, rows with distinct timesteps), the median of
  ``--bucket-reps`` timed calls after two untimed ones: ms per call, ms per row, and TFLOP/s of useful work (the
  rows times one forward's FLOPs, counted on the meta device by ``random_weights.forward_flops``);
- unless ``--no-ops`` (or the mode is not in ``--ops-modes``): every operation runs once to warm up at a coarse
  stride, then once timed with ``torch.cuda.synchronize``; the table gives the UNet batch per step, the number of
  steps, the wall time, the time per step and the peak memory (GPU: the allocator's peak during the timed run,
  both UNets resident; CPU: the process's peak RSS so far).

``--t5 gpu 8bit cpu offload`` (after the modes, eager UNets): IF's T5 v1.1 XXL encoder with random weights
(``IF-I-XL-v1.0_text_encoder_config.json``, written once to ``--t5-dir`` or a temporary folder) is loaded with
``load_prompt_encoder`` in each placement: load time, GPU memory it keeps, a new prompt's encode, a cached
prompt's, and a whole request (encode a new prompt + sample at ``--stride``) with its peak GPU memory.

``--tiny`` swaps in the tiny test UNets (``models.diffusion.tiny``) so the script can be checked on a CPU.
``--json`` is rewritten after each mode, so a run stopped by a time limit keeps what it measured.

    python bench/bench_if.py                       # CUDA, real architecture, fp16, eager
    python bench/bench_if.py --modes off default reduce-overhead --unet-buckets --ops-modes off reduce-overhead
    python bench/bench_if.py --no-ops --t5 gpu 8bit cpu
    python bench/bench_if.py --tiny --device cpu   # a quick check that everything runs
    python bench/bench_if.py --device cpu --dtype bfloat16 --no-stage2 --no-warmup --stride 330   # real, CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import resource
import shutil
import statistics
import sys
import tempfile
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
    load_prompt_encoder,
    sample,
    sdedit,
    upscale,
)
from models.diffusion.fast import COMPILE_MODES, FastOptions, FastPathRefused, FastUNet, accelerate  # noqa: E402
from models.diffusion.random_weights import (  # noqa: E402
    STAGE1_UNET_CONFIG,
    STAGE2_UNET_CONFIG,
    T5_ENCODER_CONFIG,
    RandomPrompts,
    build_random_t5_encoder,
    build_random_unet,
    forward_flops,
    load_unet_config,
)
from models.diffusion.tiny import (  # noqa: E402
    IF_I_SCHEDULER_CONFIG,
    IF_II_IMAGE_NOISING_SCHEDULER_CONFIG,
    IF_II_SCHEDULER_CONFIG,
    TINY_STAGE1_UNET,
    TINY_STAGE2_UNET,
    build_tiny_if,
)

logger = logging.getLogger("bench_if")

MODES = [m + cl for m in COMPILE_MODES for cl in ("", "+cl")]
T5_PLACEMENTS = {
    "gpu": {},
    "8bit": {"text_encoder_8bit": True},
    "cpu": {"text_encoder_device": "cpu"},
    "offload": {"text_encoder_device": "offload"},
}


def unet_configs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    if args.tiny:
        return dict(TINY_STAGE1_UNET), dict(TINY_STAGE2_UNET)
    try:
        return load_unet_config(STAGE1_UNET_CONFIG, args.config_dir), load_unet_config(
            STAGE2_UNET_CONFIG, args.config_dir
        )
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None


def engines(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[IFEngine, Stage2Engine | None]:
    from diffusers import DDPMScheduler

    cfg1, cfg2 = unet_configs(args)
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


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_rss_gib()


def parse_mode(mode: str) -> tuple[str, bool]:
    """``"reduce-overhead+cl"`` -> ("reduce-overhead", True)."""
    compile_mode, _, cl = mode.partition("+")
    if compile_mode not in COMPILE_MODES or cl not in ("", "cl"):
        raise SystemExit(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    return compile_mode, cl == "cl"


def time_ops(
    stage1: IFEngine, stage2: Stage2Engine | None, args: argparse.Namespace, device: torch.device, mode: str
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, (batch, run) in operations(stage1, stage2, args.upscale_steps).items():
        if args.ops and not any(s in name for s in args.ops):
            continue
        if not args.no_warmup:
            run(torch.Generator().manual_seed(args.seed), 330, lambda *a: None)  # warm-up at a coarse stride
        steps: list[int] = []
        reset_peak(device)
        sync(device)
        t = time.perf_counter()
        out = run(torch.Generator().manual_seed(args.seed), args.stride, lambda s, n, *_, steps=steps: steps.append(s))
        sync(device)
        wall = time.perf_counter() - t
        n = max(len(steps), 1)
        rows.append(
            {
                "mode": mode,
                "op": name,
                "unet_batch": batch,
                "steps": len(steps),
                "seconds": wall,
                "ms_per_step": 1000 * wall / n,
                "peak_gib": peak_gib(device),
                "finite": bool(torch.isfinite(out).all()),
            }
        )
        logger.info("%s [%s]: %d steps in %.3fs", name, mode, len(steps), wall)
    return rows


def time_buckets(
    engine: IFEngine, stage: str, flops_per_row: int, args: argparse.Namespace, device: torch.device, mode: str
) -> list[dict[str, Any]]:
    """One UNet call per bucket: rows with distinct timesteps, the median of ``--bucket-reps`` timed calls."""
    unet = engine.unet
    cfg = unet.config
    g = torch.Generator().manual_seed(args.seed)
    width = int(cfg.encoder_hid_dim or cfg.cross_attention_dim)
    rows: list[dict[str, Any]] = []
    for b in args.buckets:
        x = torch.randn(b, int(cfg.in_channels), engine.image_size, engine.image_size, generator=g)
        x = x.to(device, engine.dtype)
        t = torch.linspace(990, 0, b).round().long().to(device)
        e = torch.randn(b, 77, width, generator=g).to(device, engine.dtype)
        kwargs = {"class_labels": torch.full((b,), 20, device=device)} if cfg.class_embed_type is not None else {}

        def call(x: Tensor = x, t: Tensor = t, e: Tensor = e, kwargs: dict[str, Tensor] = kwargs) -> Tensor:
            with torch.inference_mode():
                return unet(x, t, encoder_hidden_states=e, return_dict=False, **kwargs)[0]

        reset_peak(device)
        for _ in range(2):
            out = call()
        times = []
        for _ in range(args.bucket_reps):
            sync(device)
            t0 = time.perf_counter()
            out = call()
            sync(device)
            times.append(time.perf_counter() - t0)
        ms = 1000 * statistics.median(times)
        rows.append(
            {
                "mode": mode,
                "stage": stage,
                "bucket": b,
                "ms": ms,
                "ms_per_row": ms / b,
                "tflops": b * flops_per_row / (ms / 1000) / 1e12,
                "peak_gib": peak_gib(device),
                "finite": bool(torch.isfinite(out).all()),
            }
        )
        logger.info("%s bucket %d [%s]: %.2f ms", stage, b, mode, ms)
    return rows


def t5_model_dir(args: argparse.Namespace, device: torch.device) -> Path:
    """A folder with ``tokenizer/`` and ``text_encoder/``: the tiny pipeline (``--tiny``), or IF's T5 v1.1 XXL
    encoder with random float16 weights built on ``device`` (written once, reused from ``--t5-dir``)."""
    root = Path(args.t5_dir) if args.t5_dir else Path(tempfile.mkdtemp(prefix="bench-t5-"))
    if args.tiny:
        return build_tiny_if(root / "tiny") if not (root / "tiny" / "unet").is_dir() else root / "tiny"
    out = root / "t5-xxl"
    if (out / "text_encoder" / "config.json").is_file():
        return out
    tokenizer_from = build_tiny_if(root / "tokenizer-source")  # a T5 tokenizer (small vocabulary: ids < 32128)
    shutil.copytree(tokenizer_from / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    t0 = time.perf_counter()
    try:
        config = load_unet_config(T5_ENCODER_CONFIG, args.config_dir)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    encoder = build_random_t5_encoder(config, device, torch.float16, args.seed + 2)
    encoder.save_pretrained(str(out / "text_encoder"))
    del encoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    logger.info("wrote a random-weight T5-XXL encoder to %s in %.1fs", out, time.perf_counter() - t0)
    return out


def t5_placements(
    stage1: IFEngine, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """Each T5 placement: load, the memory it keeps on the GPU, encodes, and one request with its peak memory."""
    model = t5_model_dir(args, device)
    rows: list[dict[str, Any]] = []
    for placement in args.t5:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        row: dict[str, Any] = {"placement": placement}
        t0 = time.perf_counter()
        try:
            text, cache = load_prompt_encoder(model, device=device, dtype=dtype, **T5_PLACEMENTS[placement])
        except Exception as exc:  # noqa: BLE001 - a placement this machine cannot load is a row that says why
            rows.append({**row, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"})
            logger.info("T5 %s: %s", placement, rows[-1]["error"])
            continue
        sync(device)
        row["load_s"] = time.perf_counter() - t0
        resident = (torch.cuda.memory_allocated(device) - base) / 2**30 if device.type == "cuda" else 0.0
        param = next(text.text_encoder.parameters())
        row.update(resident_gib=resident, where=f"{param.device.type}, {str(param.dtype).removeprefix('torch.')}")
        engine = IFEngine(
            unet=stage1.unet,
            scheduler=stage1.scheduler,
            text=text,
            device=stage1.device,
            dtype=stage1.dtype,
            image_size=stage1.image_size,
            cache=cache,
            name="bench-t5",
        )
        reset_peak(device)
        for key, prompt in (("encode_ms", "a photo of a red panda"), ("cached_ms", "a photo of a red panda")):
            sync(device)
            t0 = time.perf_counter()
            engine.encode([prompt])
            sync(device)
            row[key] = 1000 * (time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = sample(
            engine,
            f"an oil painting of a village, {placement}",
            generator=torch.Generator().manual_seed(0),
            stride=args.stride,
        )
        sync(device)
        row.update(
            request_s=time.perf_counter() - t0, peak_gib=peak_gib(device), finite=bool(torch.isfinite(out).all())
        )
        rows.append(row)
        logger.info("T5 %s: %s", placement, row)
        del text, cache, engine, param
    return rows


def fast_options(args: argparse.Namespace, mode: str) -> FastOptions:
    compile_mode, channels_last = parse_mode(mode)
    return FastOptions(
        compile=compile_mode,  # type: ignore[arg-type]
        channels_last=channels_last,
        attention=args.attention,
        buckets=tuple(args.buckets),
    )


def restore_eager(stages: list[IFEngine], plain: list[Any]) -> None:
    """Give each engine its plain UNet back (contiguous layout), dropping compiled code and graphs."""
    for engine, unet in zip(stages, plain, strict=True):
        if isinstance(engine.unet, FastUNet):
            engine.unet.release()
        engine.unet = unet
        unet.to(memory_format=torch.contiguous_format)
    gc.collect()
    if plain and next(plain[0].parameters()).device.type == "cuda":
        torch.cuda.empty_cache()


def print_tables(result: dict[str, Any], args: argparse.Namespace, device: torch.device) -> None:
    arch = "tiny test UNets" if args.tiny else "IF-I-XL (4.3B) / IF-II-L (1.2B) architecture, random weights"
    print(f"\n### IF operations per step: {result['card']}, {result['dtype']}, {arch}\n")
    print(result["summary"] + "\n")
    if result["warmups"]:
        print("| mode | fast path active | warm-up (s) | per UNet (s) | reason |")
        print("| --- | --- | ---: | --- | --- |")
        for w in result["warmups"]:
            per = ", ".join(f"{s:.1f}" for s in w["warmup_per_unet_s"])
            print(f"| {w['mode']} | {w['active']} | {w['warmup_s']:.1f} | {per} | {w['reason'] or ''} |")
        print()
    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "peak process RSS (GiB)"
    for mode in dict.fromkeys(r["mode"] for r in result["rows"]):
        print(f"Operations, mode {mode}:\n")
        print(f"| operation | UNet batch / step | steps | total (s) | per step (ms) | {memory} |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in (r for r in result["rows"] if r["mode"] == mode):
            print(
                f"| {r['op']} | {r['unet_batch']} | {r['steps']} | {r['seconds']:.3f} | {r['ms_per_step']:.1f} "
                f"| {r['peak_gib']:.1f} |"
            )
        print()
    if result["buckets"]:
        print(f"One UNet call per bucket (median of {args.bucket_reps}):\n")
        print(f"| mode | stage | bucket | ms per call | ms per row | TFLOP/s | {memory} |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in result["buckets"]:
            print(
                f"| {r['mode']} | {r['stage']} | {r['bucket']} | {r['ms']:.2f} | {r['ms_per_row']:.2f} "
                f"| {r['tflops']:.1f} | {r['peak_gib']:.1f} |"
            )
        print()
    if result["t5"]:
        print("T5 placements (eager UNets resident; request = encode a new prompt + sample):\n")
        print(
            f"| placement | T5 on | load (s) | T5 GPU memory (GiB) | encode (ms) | cached (ms) | request (s) | {memory} |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in result["t5"]:
            if "error" in r:
                print(f"| {r['placement']} | not loaded: {r['error']} | | | | | | |")
                continue
            print(
                f"| {r['placement']} | {r['where']} | {r['load_s']:.1f} | {r['resident_gib']:.2f} | {r['encode_ms']:.1f} "
                f"| {r['cached_ms']:.2f} | {r['request_s']:.2f} | {r['peak_gib']:.1f} |"
            )


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
    parser.add_argument("--no-ops", action="store_true", help="time no operation (buckets or T5 only)")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up run of each operation (CPU runs of the real architecture)",
    )
    parser.add_argument("--modes", nargs="+", default=["off"], metavar="MODE", help=f"fast-path modes: {MODES}")
    parser.add_argument("--ops-modes", nargs="*", default=None, help="modes that time the operations (default: all)")
    parser.add_argument("--attention", default="auto", choices=["auto", "flash", "efficient", "cudnn", "math"])
    parser.add_argument("--buckets", nargs="+", type=int, default=[2, 4, 8, 16, 32], help="fast-path buckets")
    parser.add_argument("--warmup-timeout", type=float, default=None, help="bound on each mode's warm-up (s)")
    parser.add_argument("--unet-buckets", action="store_true", help="time one UNet call per bucket in each mode")
    parser.add_argument("--bucket-reps", type=int, default=5)
    parser.add_argument("--t5", nargs="*", default=[], choices=list(T5_PLACEMENTS), help="T5 placements to load")
    parser.add_argument("--t5-dir", type=Path, default=None, help="where the random T5 is written (and reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    for mode in args.modes:
        parse_mode(mode)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg1, cfg2 = unet_configs(args)
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
    flops = {"stage I": forward_flops(cfg1)}
    if stage2 is not None:
        flops["stage II"] = forward_flops(cfg2)
    result: dict[str, Any] = {
        "card": card,
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": args.tiny,
        "stride": args.stride,
        "attention": args.attention,
        "modes": args.modes,
        "flops_per_row": flops,
        "summary": (
            f"torch {torch.__version__}; stage I {n1:,} params at {stage1.image_size}x{stage1.image_size}"
            + (f"; stage II {n2:,} params at {stage2.image_size}x{stage2.image_size}" if stage2 else "")
            + f"; {', '.join(f'{k} {v / 1e12:.3f} TFLOP per image' for k, v in flops.items())}"
            + f"; stride {args.stride}; build {build_s:.1f}s; attention {args.attention}; peak memory includes "
            "both resident UNets"
        ),
        "rows": [],
        "buckets": [],
        "warmups": [],
        "t5": [],
    }

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))

    stages: list[IFEngine] = [stage1] if stage2 is None else [stage1, stage2]
    plain = [s.unet for s in stages]
    for mode in args.modes:
        options = fast_options(args, mode)
        try:
            report = accelerate(stages, options, warmup_timeout_s=args.warmup_timeout)
        except FastPathRefused as exc:  # a CUDA-only mode on a CPU check: say so and go on
            result["warmups"].append({"mode": mode, **options.describe(), "active": False, "warmup_s": 0.0})
            result["warmups"][-1].update(warmup_per_unet_s=[], reason=f"refused: {exc}")
            logger.info("mode %s refused: %s", mode, exc)
            save()
            continue
        result["warmups"].append({"mode": mode, **report.describe()})
        logger.info("mode %s: fast path %s, warm-up %.1fs", mode, "active" if report.active else "off", report.seconds)
        if args.unet_buckets:
            for engine, name in zip(stages, ("stage I", "stage II"), strict=False):
                result["buckets"] += time_buckets(engine, name, flops[name], args, device, mode)
            save()
        if not args.no_ops and (args.ops_modes is None or mode in args.ops_modes):
            result["rows"] += time_ops(stage1, stage2, args, device, mode)
        save()
        restore_eager(stages, plain)
    if args.t5:
        result["t5"] = t5_placements(stage1, args, device, dtype)
        save()
    print_tables(result, args, device)
    return result["rows"]


if __name__ == "__main__":
    main()
