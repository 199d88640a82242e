"""Cross-request batching of the MNIST class model, inside one worker process (no Redis, no API, no clients):
what the network itself lets batching win, and what the batcher wins on many small requests.

    .venv/bin/python bench/bench_mnist_batching.py --threads 1
    .venv/bin/python bench/bench_mnist_batching.py --threads 2 --json runs/mnist_batching_2.json

Table 1: one guided call of the served network (``FlowNet.guided``: the encoder on B images, the decoder on
2B rows) for B = 1 .. 64 images, as the batcher makes it: ms per call and per image, and what sharing the call
saves, the per-image cost of a lone request (B = 1) over the per-image cost at B.

Table 2: ``--requests`` requests of one digit each (``--steps``, the service's default sampler and guidance)
run one by one (BATCHING=off) and all at once through ``workers.batcher.Batcher`` (BATCHING=on), in
``--rounds`` alternating rounds: the median wall time of each, requests/s and the speed-up, and the largest
difference between a request's image alone and batched (grey levels of 255). Both run on the batcher's thread,
as in the worker (``Batcher.call``). This is the whole sampling path of a worker (the solver and the driver's
bookkeeping too, which also batch), without anything else a job costs; with C clients of `--n 1`,
`bench/load.py --batching off,on` adds the costs that do not batch (RQ, Redis, the PNG, the API, the clients), so
its speed-up is this one at C requests, diluted, unless one mode pays a penalty that the other does not
(BENCHMARKS.md: 2 torch threads without batching, with the clients on the same 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.operations import MNIST_DEFAULT_GUIDANCE, MNIST_DEFAULT_SAMPLER  # noqa: E402
from core.settings import Settings  # noqa: E402
from models.flow.checkpoint import load_model  # noqa: E402
from models.flow.inference import FlowNet  # noqa: E402
from models.flow.sampling import generate, nfe  # noqa: E402
from models.flow.train import machine_description  # noqa: E402
from workers.batcher import Batcher  # noqa: E402
from workers.registry import mnist_network  # noqa: E402

IMAGES = (1, 2, 4, 8, 16, 32, 64)
CHECKPOINT = ROOT / "models" / "checkpoints" / "mnist_class_fm.safetensors"


def call_table(net: FlowNet, images: list[int], repeats: int) -> list[dict[str, float]]:
    out = []
    for b in images:
        x, t = torch.randn(b, 1, 28, 28), torch.rand(b)
        c = F.one_hot(torch.arange(b) % 10, 10).float()
        for _ in range(3):
            net.guided(x, t, c, MNIST_DEFAULT_GUIDANCE)
        n = max(repeats * 8 // b, 5)
        t0 = time.perf_counter()
        for _ in range(n):
            net.guided(x, t, c, MNIST_DEFAULT_GUIDANCE)
        ms = (time.perf_counter() - t0) / n * 1000
        out.append({"images": b, "ms_per_call": ms, "ms_per_image": ms / b})
    for row in out:
        row["saving"] = out[0]["ms_per_image"] / row["ms_per_image"]
    return out


def throughput(net: FlowNet, batcher: Batcher, args: argparse.Namespace) -> dict[str, float]:
    """The requests one by one, then all at once through the batcher; both on the batcher's thread."""

    def one(seed: int, runner: object) -> torch.Tensor:
        return generate(
            net,
            n=1,
            digits=[seed % 10],
            steps=args.steps,
            guidance=MNIST_DEFAULT_GUIDANCE,
            method=MNIST_DEFAULT_SAMPLER,
            generator=torch.Generator().manual_seed(seed),
            runner=runner,  # type: ignore[arg-type]
        )

    seeds = range(args.requests)
    batcher.call(lambda: one(0, None))  # warm-up

    def alone() -> tuple[float, list[torch.Tensor]]:
        t0 = time.perf_counter()
        images = [one(seed, None) for seed in seeds]
        return time.perf_counter() - t0, images

    def batched() -> tuple[float, dict[int, torch.Tensor], int, int]:
        images: dict[int, torch.Tensor] = {}
        errors: list[BaseException] = []

        def submit(seed: int) -> None:
            try:
                images[seed] = one(seed, batcher.run)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=submit, args=(seed,)) for seed in seeds]
        forwards0, rows0 = batcher._driver.forwards, batcher._driver.rows
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if errors:
            raise SystemExit(f"{len(errors)} requests failed: {errors[0]!r}")
        return wall, images, batcher._driver.forwards - forwards0, batcher._driver.rows - rows0

    alone_s, batched_s, diff = [], [], 0.0
    for _ in range(args.rounds):  # alternating, so that a slow spell of the machine hits both modes
        wall, alone_images = batcher.call(alone)
        alone_s.append(wall)
        wall, batched_images, forwards, rows = batched()
        batched_s.append(wall)
        diff = max([diff, *(float((batched_images[s] - alone_images[s]).abs().max()) for s in seeds)])
    alone_median, batched_median = statistics.median(alone_s), statistics.median(batched_s)
    return {
        "requests": args.requests,
        "rounds": args.rounds,
        "alone_s": alone_median,
        "batched_s": batched_median,
        "speedup": alone_median / batched_median,
        "forwards": forwards,
        "mean_rows": rows / max(forwards, 1),
        "max_diff_grey_levels": diff * 255,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (the worker's TORCH_THREADS)")
    p.add_argument("--requests", type=int, default=16, help="requests of Table 2 (16 = 16 clients of --n 1)")
    p.add_argument("--rounds", type=int, default=7, help="rounds of Table 2 (alone, then batched); medians")
    p.add_argument("--steps", type=int, default=5, help="solver steps of each request (bench/load.py --steps)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls at B = 8 (more for smaller B)")
    p.add_argument("--images", type=int, nargs="+", default=list(IMAGES), help="images per call of Table 1")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="a class-conditioned flow checkpoint")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = Settings()
    batcher = Batcher(max_rows=settings.max_batch_rows).start()
    try:
        net = batcher.call(lambda: mnist_network(load_model(args.checkpoint)[0], settings))
        calls = batcher.call(lambda: call_table(net, args.images, args.repeats))
        mix = throughput(net, batcher, args)
    finally:
        batcher.stop()
    machine = machine_description(torch.device("cpu"))
    print(f"MNIST class model ({net.dtype}, {args.threads} torch threads) on {machine}")
    print("\n| images per call | ms per call | ms per image | saving (per image at 1 / at B) |")
    print("| ---: | ---: | ---: | ---: |")
    for r in calls:
        print(f"| {r['images']} | {r['ms_per_call']:.2f} | {r['ms_per_image']:.3f} | {r['saving']:.2f}x |")
    print(
        f"\n{mix['requests']} requests of 1 digit (median of {mix['rounds']} rounds), {MNIST_DEFAULT_SAMPLER} {args.steps} steps "
        f"({nfe(MNIST_DEFAULT_SAMPLER, args.steps)} calls each), guidance {MNIST_DEFAULT_GUIDANCE}"
    )
    print("| mode | wall (s) | requests/s |")
    print("| --- | ---: | ---: |")
    print(f"| one by one (BATCHING=off) | {mix['alone_s']:.3f} | {mix['requests'] / mix['alone_s']:.1f} |")
    print(f"| batched (BATCHING=on) | {mix['batched_s']:.3f} | {mix['requests'] / mix['batched_s']:.1f} |")
    print(
        f"speed-up {mix['speedup']:.2f}x; {mix['forwards']} forwards of {mix['mean_rows']:.1f} rows on average; "
        f"largest difference alone against batched: {mix['max_diff_grey_levels']:.2f} grey levels of 255"
    )
    result: dict[str, object] = {"machine": machine, "threads": args.threads, "calls": calls, "mix": mix}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
