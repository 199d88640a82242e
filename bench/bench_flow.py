"""Benchmark the MNIST flow-matching UNet: training throughput and the time to sample 100 digits.

    .venv/bin/python bench/bench_flow.py                       # CPU (and CUDA when present)
    .venv/bin/python bench/bench_flow.py --threads 2 --widths 32 64 --json results/bench_flow.json

Training: images/s of full optimiser steps (forward, backward, Adam) of the class-conditioned
flow-matching objective at batch 64 (the default) on random data, after warm-up steps.
Sampling: wall time for 100 class-conditioned digits (10 of each) with CFG (one batched forward of
200 images per evaluation) for Euler 50 steps (50 NFE) and Heun 12 steps (24 NFE); with
``--checkpoint`` the shipped weights are used, otherwise random weights of the same width (the cost
does not depend on the weights). On CUDA, also bf16 autocast + channels-last training and large batches.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.flow.checkpoint import load_model
from models.flow.objectives import drop_labels, flow_matching_loss
from models.flow.sampling import generate, nfe
from models.flow.training import build_seeded_model
from models.flow.unet import UNetConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(
    width: int,
    device: torch.device,
    *,
    batch: int = 64,
    steps: int = 10,
    warmup: int = 3,
    bf16: bool = False,
    channels_last: bool = False,
) -> float:
    """Training images/s of the class-conditioned flow-matching step."""
    model = build_seeded_model(UNetConfig("class", width), 0).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, device=device, generator=g).contiguous(memory_format=fmt)
    c = F.one_hot(torch.randint(0, 10, (batch,), device=device, generator=g), 10).float()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            cc = drop_labels(c, 0.1, generator=g)
            loss = flow_matching_loss(lambda xt, t: model(xt, t, cc), x, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def bench_sample(model: torch.nn.Module, method: str, steps: int, device: torch.device, repeats: int = 1) -> float:
    """Seconds to generate 100 guided digits (best of ``repeats``)."""
    digits = [i % 10 for i in range(100)]
    generate(model, n=10, digits=digits[:10], steps=2, generator=torch.Generator().manual_seed(0))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        generate(
            model,
            n=100,
            digits=digits,
            steps=steps,
            method=method,
            guidance=5.0,
            generator=torch.Generator().manual_seed(0),
        )
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to try")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument(
        "--checkpoint",
        default="models/checkpoints/mnist_class_fm.safetensors",
        help="class checkpoint for sampling (random weights of the width when missing)",
    )
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)

    rows: list[dict] = []
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    for device in devices:
        thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for width in args.widths:
                variants = [("fp32", 64, False, False)]
                if device.type == "cuda":
                    variants += [
                        ("bf16+channels_last", 64, True, True),
                        ("fp32", 1024, False, False),
                        ("bf16+channels_last", 1024, True, True),
                    ]
                for name, batch, bf16, cl in variants:
                    ips = bench_train(width, device, batch=batch, steps=args.train_steps, bf16=bf16, channels_last=cl)
                    rows.append(
                        {
                            "what": "train",
                            "device": str(device),
                            "threads": threads,
                            "D": width,
                            "batch": batch,
                            "precision": name,
                            "images_per_s": round(ips, 1),
                        }
                    )
                    print(rows[-1], flush=True)
                ck = Path(args.checkpoint)
                if ck.exists() and load_model(ck)[1].num_hiddens == width:
                    model, _ = load_model(ck, device=device)
                    src = ck.name
                else:
                    model, src = build_seeded_model(UNetConfig("class", width), 0).to(device).eval(), "random weights"
                for method, steps in (("euler", 50), ("heun", 12)):
                    secs = bench_sample(model, method, steps, device)
                    rows.append(
                        {
                            "what": "sample100",
                            "device": str(device),
                            "threads": threads,
                            "D": width,
                            "method": method,
                            "steps": steps,
                            "nfe": nfe(method, steps),
                            "weights": src,
                            "seconds": round(secs, 2),
                        }
                    )
                    print(rows[-1], flush=True)

    cpu = platform.processor() or platform.machine()
    print(f"\nmachine: {platform.node()} ({cpu}), torch {torch.__version__}")
    print(
        "\n| device | threads | D | training images/s (batch 64, fp32) | 100 digits, Euler 50 (50 NFE) | 100 digits, Heun 12 (24 NFE) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for device in devices:
        for threads in {r["threads"] for r in rows if r["device"] == str(device)}:
            for width in args.widths:
                sel = [r for r in rows if r["device"] == str(device) and r["threads"] == threads and r["D"] == width]
                tr = next(r for r in sel if r["what"] == "train" and r["batch"] == 64 and r["precision"] == "fp32")
                eu = next(r for r in sel if r["what"] == "sample100" and r["method"] == "euler")
                he = next(r for r in sel if r["what"] == "sample100" and r["method"] == "heun")
                print(
                    f"| {device} | {threads} | {width} | {tr['images_per_s']:.0f} | {eu['seconds']:.1f} s | {he['seconds']:.1f} s |"
                )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"machine": platform.node(), "torch": torch.__version__, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
