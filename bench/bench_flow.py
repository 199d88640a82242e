"""Benchmark the MNIST flow models: the service's model time per request, old default against new, and
training throughput.

    .venv/bin/python bench/bench_flow.py                                   # CPU, 1 and 2 threads
    .venv/bin/python bench/bench_flow.py --threads 2 --json runs/bench_flow.json
    # on a GPU: D=64 class model, data on the device, bf16, channels-last, compile, large batch
    .venv/bin/python bench/bench_flow.py --device cuda --threads 0 --train-widths 64 --train-batch 4096 \\
        --train-bf16 --train-channels-last --train-compile --compile --json bench_flow_gpu.json

**Requests.** What the worker times as model time for `POST /mnist/sample?digit=7&n=N`: sampling N
digits of one class with guidance, tiling them into a grid and encoding the PNG
(`models.flow.sampling.generate` + `make_grid` + `models.imageio.png_bytes`), for N = 10 and 100,
in one run for

* the **old default**: the plain float32 `FlowUNet` (as `load_model` returns it), Euler 50 steps,
  guidance 5 -- with the old D=32 architecture (random weights unless `--old-checkpoint`: the cost of
  a forward pass does not depend on the values of the weights);
* the **new default**: the shipped class checkpoint through `prepare_for_inference` (folded BN,
  channels-last, bf16 autocast where the CPU has native bf16, `--compile` optional) with the new
  sampler, steps and guidance.

The new default is warmed up as the worker should do at start-up (`FlowNet.warm_up`, which also
compiles when `--compile`; reported as `warm-up`); then each configuration's first request is
timed on its own (`first`) and the table shows the median of `--repeats` requests after it.

**Training.** images/s of full optimiser steps (forward, backward, Adam, EMA update) of the
class-conditioned flow-matching objective, batches drawn from a 60,000-image tensor that lives on the
device (as `models.flow.training.train` does), after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.operations import MNIST_DEFAULT_GUIDANCE, MNIST_DEFAULT_SAMPLER, MNIST_DEFAULT_STEPS
from models.flow.checkpoint import load_model
from models.flow.ema import EMA
from models.flow.grid import make_grid
from models.flow.inference import bf16_supported, prepare_for_inference
from models.flow.objectives import drop_labels, flow_matching_loss
from models.flow.sampling import generate, nfe
from models.flow.train import machine_description
from models.flow.training import build_seeded_model
from models.flow.unet import FlowUNet, UNetConfig
from models.imageio import png_bytes


class RequestConfig(NamedTuple):
    """One way of serving a request: which network path, sampler, steps and guidance.

    (A NamedTuple, not a dataclass: the tests import this script without registering it as a module.)
    """

    name: str
    method: str
    steps: int
    guidance: float
    fast: bool  # through prepare_for_inference (else the plain float32 FlowUNet)
    dtype: str = "auto"
    compile: bool = False


#: The default before issue 13: Euler 50, guidance 5, the plain float32 network.
OLD_DEFAULT = RequestConfig("old default", "euler", 50, 5.0, fast=False)
#: The new default chosen in issue 13 (models/checkpoints/README.md): the service's own, for a digit.
NEW_DEFAULT = RequestConfig(
    "new default", MNIST_DEFAULT_SAMPLER, MNIST_DEFAULT_STEPS["class"], MNIST_DEFAULT_GUIDANCE, fast=True
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serve_once(model: torch.nn.Module, cfg: RequestConfig, n: int, digit: int, device: torch.device) -> bytes:
    """One request as the worker runs it: sample n digits, tile, encode the PNG."""
    images = generate(
        model,
        n=n,
        digits=[digit] * n,
        steps=cfg.steps,
        guidance=cfg.guidance,
        method=cfg.method,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    return png_bytes(make_grid(images, ncols=min(n, 10)))


def bench_request(
    model: torch.nn.Module, cfg: RequestConfig, n: int, device: torch.device, repeats: int
) -> dict[str, float]:
    """Seconds for one request of n digits: the first (warm-up, includes compilation) and the median of repeats."""
    _sync(device)
    t0 = time.perf_counter()
    serve_once(model, cfg, n, 7, device)
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        serve_once(model, cfg, n, 7, device)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def request_models(cfg: RequestConfig, args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The network a configuration serves with, and where its weights come from."""
    if cfg.fast:
        path = Path(args.checkpoint)
        if path.exists():
            model, _ = load_model(path, device=device)
            src = path.name
        else:
            model, src = build_seeded_model(UNetConfig("class", args.new_width), 0).to(device).eval(), "random weights"
        return prepare_for_inference(model, dtype=cfg.dtype, compile=cfg.compile), src
    if args.old_checkpoint:
        model, _ = load_model(args.old_checkpoint, device=device)
        return model, Path(args.old_checkpoint).name
    return build_seeded_model(UNetConfig("class", args.old_width), 0).to(device).eval(), "random weights"


def bench_train(
    width: int,
    device: torch.device,
    *,
    batch: int,
    steps: int,
    warmup: int,
    bf16: bool,
    channels_last: bool,
    compile: bool = False,
    ema: bool = True,
) -> float:
    """Training images/s of the class-conditioned flow-matching step (data resident on the device)."""
    model: FlowUNet = build_seeded_model(UNetConfig("class", width), 0).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    averager = EMA(model, 0.999) if ema else None
    g = torch.Generator(device=device).manual_seed(0)
    n_data = max(60_000, batch)
    data = torch.rand(n_data, 1, 28, 28, device=device, generator=g).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (n_data,), device=device, generator=g)

    def step() -> None:
        idx = torch.randint(0, n_data, (batch,), device=device, generator=g)
        x, c = data[idx], F.one_hot(labels[idx], 10).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            cc = drop_labels(c, 0.1, generator=g)
            loss = flow_matching_loss(lambda xt, t: fwd(xt, t, cc), x, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averager is not None:
            averager.update(model)

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def machine(device: torch.device) -> str:
    return f"{machine_description(device)}, native bf16: {bf16_supported('cpu')}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts (0: leave as is)")
    p.add_argument(
        "--checkpoint",
        default="models/checkpoints/mnist_class_fm.safetensors",
        help="class checkpoint for the new default (random weights of --new-width when missing)",
    )
    p.add_argument("--new-width", type=int, default=32)
    p.add_argument("--old-checkpoint", help="checkpoint for the old default (default: random weights, --old-width)")
    p.add_argument("--old-width", type=int, default=32)
    p.add_argument("--sampler", default=NEW_DEFAULT.method, help="new default's sampler")
    p.add_argument("--steps", type=int, default=NEW_DEFAULT.steps, help="new default's steps")
    p.add_argument("--guidance", type=float, default=NEW_DEFAULT.guidance, help="new default's guidance")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="new default's dtype")
    p.add_argument("--compile", action="store_true", help="new default through torch.compile")
    p.add_argument("--n", type=int, nargs="+", default=[10, 100], help="digits per request")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-old", action="store_true", help="skip the old default (e.g. on a GPU)")
    p.add_argument("--train-widths", type=int, nargs="*", default=[32, 64], help="empty: no training benchmark")
    p.add_argument("--train-batch", type=int, nargs="+", default=[128])
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--train-bf16", action="store_true", help="bf16 autocast (where native)")
    p.add_argument("--train-channels-last", action="store_true")
    p.add_argument("--train-compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--train-fp32", action="store_true", help="also time the float32 step next to bf16")
    p.add_argument("--json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    new = RequestConfig(
        "new default", args.sampler, args.steps, args.guidance, fast=True, dtype=args.dtype, compile=args.compile
    )
    configs = [new] if args.no_old else [OLD_DEFAULT, new]
    rows: list[dict] = []
    for threads in args.threads:
        if threads > 0:
            torch.set_num_threads(threads)
        for cfg in configs:
            model, src = request_models(cfg, args, device)
            warm = model.warm_up((1, *args.n)) if cfg.fast else 0.0  # type: ignore[operator]
            for n in args.n:
                r = bench_request(model, cfg, n, device, args.repeats)
                rows.append(
                    {
                        "what": "request",
                        "config": cfg.name,
                        "device": str(device),
                        "threads": torch.get_num_threads(),
                        "n": n,
                        "method": cfg.method,
                        "steps": cfg.steps,
                        "nfe": nfe(cfg.method, cfg.steps),
                        "guidance": cfg.guidance,
                        "path": (
                            f"prepare_for_inference({getattr(model, 'dtype', '')}, compile={cfg.compile})"
                            if cfg.fast
                            else "plain float32 FlowUNet"
                        ),
                        "weights": src,
                        "warm_up_s": round(warm, 3),
                        **{k: round(v, 4) for k, v in r.items()},
                    }
                )
                print(rows[-1], flush=True)
        for width in args.train_widths:
            for batch in args.train_batch:
                variants = [(args.train_bf16, args.train_channels_last, args.train_compile)]
                if args.train_fp32 and args.train_bf16:
                    variants.insert(0, (False, args.train_channels_last, False))
                for bf16, cl, comp in variants:
                    use_bf16 = bf16 and bf16_supported(device)
                    ips = bench_train(
                        width,
                        device,
                        batch=batch,
                        steps=args.train_steps,
                        warmup=args.train_warmup,
                        bf16=use_bf16,
                        channels_last=cl,
                        compile=comp,
                    )
                    rows.append(
                        {
                            "what": "train",
                            "device": str(device),
                            "threads": torch.get_num_threads(),
                            "D": width,
                            "batch": batch,
                            "bf16": use_bf16,
                            "channels_last": cl,
                            "compile": comp,
                            "images_per_s": round(ips, 1),
                        }
                    )
                    print(rows[-1], flush=True)

    desc = machine(device)
    print(f"\nmachine: {desc}")
    req = [r for r in rows if r["what"] == "request"]
    if req:
        print(
            "\n| config | threads | sampler | steps | NFE | guidance | path | n | model time (median) | first request "
            "| warm-up |"
        )
        print("| --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
        for r in req:
            print(
                f"| {r['config']} | {r['threads']} | {r['method']} | {r['steps']} | {r['nfe']} | {r['guidance']:g} | "
                f"{r['path']} | {r['n']} | {r['median_s']:.3f} s | {r['first_s']:.3f} s | {r['warm_up_s']:.2f} s |"
            )
        for threads in sorted({r["threads"] for r in req}):
            for n in args.n:
                pair = {r["config"]: r for r in req if r["threads"] == threads and r["n"] == n}
                if len(pair) == 2:
                    o, w = pair["old default"]["median_s"], pair["new default"]["median_s"]
                    print(f"threads {threads}, n={n}: old {o:.3f} s -> new {w:.3f} s ({o / w:.1f}x)")
    tr = [r for r in rows if r["what"] == "train"]
    if tr:
        print("\n| device | threads | D | batch | bf16 | channels-last | compile | training images/s |")
        print("| --- | ---: | ---: | ---: | --- | --- | --- | ---: |")
        for r in tr:
            print(
                f"| {r['device']} | {r['threads']} | {r['D']} | {r['batch']} | {r['bf16']} | {r['channels_last']} | "
                f"{r['compile']} | {r['images_per_s']:.0f} |"
            )
    result = {
        "machine": desc,
        "node": platform.node(),
        "torch": torch.__version__,
        "new_default": new._asdict(),
        "old_default": OLD_DEFAULT._asdict(),
        "rows": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
