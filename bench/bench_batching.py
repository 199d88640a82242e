"""Cross-request batching of the DeepFloyd stage-I UNet: per-image step cost by rows, and the batcher's
throughput on a mix of operations, alone (one request after another) against batched (all at once).

    python bench/bench_batching.py                       # CUDA: IF-I-XL architecture, random fp16 weights
    python bench/bench_batching.py --tiny --device cpu   # the tiny stage-I UNet on the CPU (checks the script)

Table 1: one forward of R rows (R = 2, 4, 8, 16, 32) with per-row timesteps and embeddings, the way the
batcher calls it: ms per forward and per image (a CFG step of one request is 2 rows).
Table 2: the mix (sample, SDEdit at two noise levels, inpaint, 2- and 4-view anagrams, hybrid, one-step and
iterative denoise), each request ``--repeat`` times: wall time and images/s run one by one (BATCHING=off)
and all at once through ``workers.batcher.Batcher`` (BATCHING=on, ``--max-rows``), and the speed-up.
UNets are built on the device from the public configs (``models/diffusion/random_weights.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.diffusion import IFEngine, ops  # noqa: E402
from models.diffusion.random_weights import (  # noqa: E402
    STAGE1_UNET_CONFIG,
    RandomPrompts,
    build_random_unet,
    load_unet_config,
)
from models.diffusion.tiny import IF_I_SCHEDULER_CONFIG, TINY_STAGE1_UNET  # noqa: E402
from models.diffusion.views import get_view  # noqa: E402
from workers.batcher import Batcher  # noqa: E402

ROWS = (2, 4, 8, 16, 32)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> IFEngine:
    from diffusers import DDPMScheduler

    try:
        cfg = dict(TINY_STAGE1_UNET) if args.tiny else load_unet_config(STAGE1_UNET_CONFIG, args.config_dir)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None
    unet = build_random_unet(cfg, device, dtype, args.seed)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    text = RandomPrompts(int(cfg["encoder_hid_dim"]))
    return IFEngine.from_components(unet, DDPMScheduler.from_config(IF_I_SCHEDULER_CONFIG), text, name="bench")


def forward_table(stage1: IFEngine, repeats: int) -> list[dict[str, float]]:
    S, adapter, device = stage1.image_size, stage1.adapter, stage1.device
    embeds = stage1.encode([f"prompt {i}" for i in range(max(ROWS))])
    out = []
    for rows in ROWS:
        x = torch.randn(rows, 3, S, S, device=device)
        t = torch.randint(0, 1000, (rows,), device=device)
        with torch.inference_mode():
            for _ in range(2):
                adapter(x, t, embeds[:rows])
            sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                adapter(x, t, embeds[:rows])
            sync(device)
        ms = (time.perf_counter() - t0) / repeats * 1e3
        out.append({"rows": rows, "ms_per_forward": ms, "ms_per_image": ms / rows})
    return out


def mix(stage1: IFEngine, stride: int) -> dict[str, Callable[..., Tensor]]:
    S = stage1.image_size
    g0 = torch.Generator().manual_seed(0)
    photo = torch.rand(1, 3, S, S, generator=g0) * 2 - 1
    mask = torch.zeros(1, 1, S, S)
    mask[..., : S // 2] = 1
    v2 = [get_view("identity"), get_view("flip_vertical")]
    v4 = [get_view(v) for v in ("identity", "rot90", "rot180", "rot270")]
    n = len(stage1.timesteps(stride))

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    return {
        "sample": lambda r, s: ops.sample(stage1, "a red ball", generator=gen(s), stride=stride, runner=r),
        "sdedit_early": lambda r, s: ops.sdedit(
            stage1, photo, "a drawing", i_start=n // 3, generator=gen(s), stride=stride, runner=r
        ),
        "sdedit_late": lambda r, s: ops.sdedit(
            stage1, photo, "a photo", i_start=2 * n // 3, generator=gen(s), stride=stride, runner=r
        ),
        "inpaint": lambda r, s: ops.inpaint(
            stage1, photo, mask, "a balloon", generator=gen(s), stride=stride, runner=r
        ),
        "anagram_2": lambda r, s: ops.anagram(stage1, ["a", "b"], v2, generator=gen(s), stride=stride, runner=r),
        "anagram_4": lambda r, s: ops.anagram(
            stage1, ["a", "b", "c", "d"], v4, generator=gen(s), stride=stride, runner=r
        ),
        "hybrid": lambda r, s: ops.hybrid(stage1, "a skull", "waterfalls", generator=gen(s), stride=stride, runner=r),
        "one_step": lambda r, s: ops.denoise(stage1, photo, 500, "one_step", generator=gen(s), runner=r).denoised,
        "iterative": lambda r, s: (
            ops.denoise(stage1, photo, 690, "iterative", generator=gen(s), stride=stride, runner=r).denoised
        ),
    }


def throughput(stage1: IFEngine, args: argparse.Namespace) -> dict[str, float]:
    jobs = [(name, run, seed) for seed in range(args.repeat) for name, run in mix(stage1, args.stride).items()]
    with torch.inference_mode():
        jobs[0][1](None, 0)  # warm-up
    sync(stage1.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for _, run, seed in jobs:
            run(None, seed)
    sync(stage1.device)
    alone = time.perf_counter() - t0

    batcher = Batcher(max_rows=args.max_rows).start()
    errors: list[BaseException] = []

    def one(run: Callable[..., Tensor], seed: int) -> None:
        try:
            with torch.inference_mode():
                run(batcher.run, seed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(run, seed)) for _, run, seed in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sync(stage1.device)
    batched = time.perf_counter() - t0
    batcher.stop()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {errors[0]!r}")
    driver = batcher._driver
    return {
        "requests": len(jobs),
        "alone_s": alone,
        "batched_s": batched,
        "speedup": alone / batched,
        "requests_per_s_alone": len(jobs) / alone,
        "requests_per_s_batched": len(jobs) / batched,
        "forwards": driver.forwards,
        "mean_rows": driver.rows / max(driver.forwards, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="default float16 on CUDA, float32 on CPU",
    )
    p.add_argument("--tiny", action="store_true", help="the tiny stage-I UNet (CPU check of the script)")
    p.add_argument("--config-dir", default=None, help="folder of the public IF configs (default: lookup)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--stride", type=int, default=30, help="30 = the 34 strided steps")
    p.add_argument("--repeat", type=int, default=2, help="copies of the mix")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per row count")
    p.add_argument("--max-rows", type=int, default=64, help="MAX_BATCH_ROWS of the batcher")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    t0 = time.perf_counter()
    stage1 = engine(args, device, dtype)
    built = time.perf_counter() - t0
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"stage-I UNet ({'tiny' if args.tiny else 'IF-I-XL'}, {dtype}, random weights) on {card}, built in {built:.1f} s"
    )
    rows = forward_table(stage1, args.repeats)
    print("\n| rows | ms per forward | ms per image | per image vs 2 rows |")
    print("| ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['rows']} | {r['ms_per_forward']:.2f} | {r['ms_per_image']:.2f} | "
            f"{r['ms_per_image'] / rows[0]['ms_per_image']:.2f}x |"
        )
    result = throughput(stage1, args)
    print(
        f"\nmix of {len(mix(stage1, args.stride))} operations x {args.repeat} = {result['requests']} requests, "
        f"stride {args.stride}, MAX_BATCH_ROWS {args.max_rows}"
    )
    print("| mode | wall (s) | requests/s |")
    print("| --- | ---: | ---: |")
    print(f"| one by one (BATCHING=off) | {result['alone_s']:.2f} | {result['requests_per_s_alone']:.2f} |")
    print(f"| batched (BATCHING=on) | {result['batched_s']:.2f} | {result['requests_per_s_batched']:.2f} |")
    print(
        f"speed-up {result['speedup']:.2f}x; {result['forwards']} forwards of {result['mean_rows']:.1f} rows on average"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"card": card, "dtype": str(dtype), "tiny": args.tiny, "forwards": rows, "mix": result}, indent=2
            )
        )


if __name__ == "__main__":
    main()
