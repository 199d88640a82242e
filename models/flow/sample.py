"""Sample MNIST digits from the flow-matching checkpoints into one PNG grid (what ``/mnist/sample`` serves).

    python -m models.flow.sample --digit 7 --n 10 --out sevens.png            # class model, guided
    python -m models.flow.sample --n 20 --sampler heun --steps 25 --out any.png # time model, unguided

The defaults are the service's (midpoint; 1 step for the class model, 4 above guidance 1.75, 3 for the time
model; guidance 1.5): chosen on the evaluator, see models/checkpoints/README.md.

With ``--digit`` the class-conditioned checkpoint draws that digit with classifier-free guidance; without
it the time-conditioned checkpoint draws unguided digits. The grid is white digits on black, 28x28 tiles,
row-major, min(n, 10) columns, the same layout and the same numbers as the service for the same seed (the
same fast path: folded BatchNorm, channels-last, bfloat16 where the hardware has it natively).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .. import imageio
from .checkpoint import CheckpointError, load_model
from .grid import make_grid
from .inference import PRECISIONS, prepare_for_inference
from .sampling import SOLVERS, generate

logger = logging.getLogger("models.flow.sample")

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
#: The service's defaults (core.operations.MNIST_DEFAULT_* and mnist_default_steps; a test checks both agree).
DEFAULT_SAMPLER = "midpoint"
DEFAULT_GUIDANCE = 1.5


def default_steps(digit: int | None, sampler: str, guidance: float) -> int:
    """The steps of a request that names none: the fewest measured to keep quality for its model, solver and
    guidance (models/checkpoints/README.md)."""
    if sampler != DEFAULT_SAMPLER:
        return 50  # euler and heun need many steps; what they had before the midpoint default
    if digit is None:
        return 3
    return 1 if guidance <= 1.75 else 4  # one midpoint step over-shoots under strong guidance


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.flow.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--digit", type=int, choices=range(10), metavar="0..9", help="omit for unguided digits")
    p.add_argument("--n", type=int, default=10, help="how many digits (default 10)")
    p.add_argument(
        "--steps",
        type=int,
        help="ODE solver steps (default, midpoint: 1 with --digit, 4 above guidance 1.75, 3 without; euler or heun: 50)",
    )
    p.add_argument("--sampler", choices=sorted(SOLVERS), default=DEFAULT_SAMPLER)
    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        help=f"classifier-free guidance scale w (class model; default {DEFAULT_GUIDANCE})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--scale", type=int, default=1, help="upscale the grid (nearest neighbour)")
    p.add_argument("--class-checkpoint", default=str(CHECKPOINTS / "mnist_class_fm.safetensors"))
    p.add_argument("--time-checkpoint", default=str(CHECKPOINTS / "mnist_time_fm.safetensors"))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="auto",
        help="auto = bfloat16 where the hardware has it natively, as the service (MNIST_PRECISION)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps is None:
        args.steps = default_steps(args.digit, args.sampler, args.guidance)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.n < 1 or args.steps < 1 or args.guidance < 0:
        logger.error("need n >= 1, steps >= 1 and guidance >= 0")
        return 2
    path = args.time_checkpoint if args.digit is None else args.class_checkpoint
    try:
        model, _ = load_model(path, device=args.device)
    except CheckpointError as exc:
        logger.error("%s", exc)
        return 2
    net = prepare_for_inference(model, dtype=args.precision)
    bar = tqdm(total=args.steps, unit="step", disable=args.no_progress, leave=False)

    def progress(step: int, total: int, *_: object) -> None:
        bar.update(step - bar.n)

    images = generate(
        net,
        n=args.n,
        digits=None if args.digit is None else [args.digit] * args.n,
        steps=args.steps,
        guidance=args.guidance,
        method=args.sampler,
        generator=torch.Generator(device=args.device).manual_seed(args.seed),
        callback=progress,
    )
    bar.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(imageio.png_bytes(make_grid(images, ncols=min(args.n, 10)), scale=args.scale))
    logger.info("wrote %d digits to %s", args.n, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
