"""Train a MNIST UNet from the command line; one run folder per run.

    python -m models.flow.train --objective class --out runs/class_fm
    python -m models.flow.train --objective time --epochs 10 --out runs/time_fm
    python -m models.flow.train --objective denoise --out runs/denoiser            # sigma 0.5, D=128
    python -m models.flow.train --objective denoise --pure-noise --out runs/avg     # "average digit"

    # the shipped recipe (see models/checkpoints/README.md): EMA weights, bf16 autocast on a CPU with bf16
    python -m models.flow.train --objective class --hidden 32 --epochs 40 --batch-size 128 --lr 2e-3 \
        --scheduler cosine --warmup-steps 200 --ema-decay 0.999 --bf16 --channels-last --out runs/class_v2

The run folder holds ``model.safetensors`` + ``model.json`` (rebuilds the network alone; also
records the command, the config, per-epoch losses and times; with ``--ema-decay`` these are the EMA
weights and ``model_raw.safetensors`` holds the trained ones), ``loss.png``, ``losses.json``,
``train_config.json``, sample grids after epoch 1, epoch 5 and the last epoch
(``samples_epoch001.png`` ...) and, with ``--keep-epochs``, snapshots ``model_epochNNN.safetensors``.
Data: every IDX pair in ``--data`` (default ``../shared/data/mnist`` relative to the project root),
shuffled with the seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import load_model, save_model
from .data import DEFAULT_MIRROR, MNISTDataError, MNISTSplit, load_all
from .inference import bf16_supported
from .objectives import TIME_DENSITIES, add_noise
from .pngio import save_grid, save_loss_curve
from .sampling import generate
from .training import OBJECTIVE_TO_CONDITIONING, EpochResult, TrainConfig, train
from .unet import FlowUNet

logger = logging.getLogger("models.flow.train")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Where the CLIs look for MNIST when --data is not given: $MNIST_DATA_DIR, else the workplace's shared copy.
DEFAULT_DATA_DIR = Path(os.environ.get("MNIST_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data" / "mnist")
DATA_HELP = (
    "folder with MNIST IDX files: the four official files (train/t10k images and labels, .gz or not) or any "
    "<prefix>-images-idx3-ubyte + <prefix>-labels-idx1-ubyte pair; default $MNIST_DATA_DIR, else "
    f"{DEFAULT_DATA_DIR}"
)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data, --download and --mirror, the same for every flow command line."""
    p.add_argument("--data", default=str(DEFAULT_DATA_DIR), help=DATA_HELP)
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch the four official files into --data first (md5-checked; needs internet)",
    )
    p.add_argument("--mirror", default=DEFAULT_MIRROR, help="URL prefix for --download")


def load_data(args: argparse.Namespace) -> MNISTSplit:
    """The digits of --data (after --download), or exit 2 with the reason and what to do (no traceback)."""
    try:
        return load_all(args.data, download=args.download, mirror=args.mirror)
    except MNISTDataError as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None


def machine_description(device: torch.device) -> str:
    """Human-readable host description for run metadata (CPU model, cores, threads, GPU)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{platform.node()}: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        desc += f", {torch.cuda.get_device_name(device)}"
    return desc


def pick_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sample_grid(
    model: FlowUNet, objective: str, fixed: torch.Tensor, seed: int, sigma: float
) -> tuple[torch.Tensor, int]:
    """Images for a progress grid and its column count.

    time: 40 unguided samples; class: 4 rows of digits 0..9 (guidance 5, 50 Euler steps);
    denoise: rows of (clean, noisy, denoised) for 10 fixed digits.
    """
    g = torch.Generator().manual_seed(seed)
    if objective == "time":
        return generate(model, n=40, digits=None, generator=g), 10
    if objective == "class":
        return generate(model, n=40, digits=list(range(10)) * 4, generator=g), 10
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.no_grad():
        x = fixed.to(device)
        noisy = add_noise(x, sigma, generator=torch.Generator(device=device).manual_seed(seed))
        out = model(noisy).clamp(0, 1)
    model.train(was)
    return torch.cat([x, noisy.clamp(0, 1), out]), 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=["denoise", "time", "class"], default="time")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--epochs", type=int, help="default: 5 (denoise) / 10 (flow)")
    p.add_argument("--batch-size", type=int, help="default: 256 (denoise) / 64 (flow)")
    p.add_argument("--lr", type=float, help="default: 1e-4 (denoise) / 1e-2 (flow)")
    p.add_argument("--hidden", type=int, help="UNet width D; default 128 (denoise) / 64 (flow)")
    p.add_argument(
        "--scheduler",
        choices=["exponential", "cosine", "constant", "none"],
        default="exponential",
        help="exponential: x gamma per epoch; cosine: per-step warm-up + cosine decay; constant: "
        "warm-up then flat; none: AdamW at lr/10, constant (the seed's ablation)",
    )
    p.add_argument("--gamma", type=float, help="ExponentialLR gamma; default 0.1 ** (1/epochs)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up steps (cosine, constant)")
    p.add_argument("--min-lr-ratio", type=float, default=0.0, help="final lr / lr for the cosine schedule")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="EMA of the weights (e.g. 0.999); the EMA copy becomes model.safetensors. 0 = off",
    )
    p.add_argument("--no-ema-warmup", action="store_true", help="constant EMA decay from the first step")
    p.add_argument(
        "--time-density",
        choices=list(TIME_DENSITIES),
        default="uniform",
        help="training t density: uniform, or logit_normal (sigmoid of N(t-loc, t-scale^2))",
    )
    p.add_argument("--t-loc", type=float, default=0.0, help="logit-normal location")
    p.add_argument("--t-scale", type=float, default=1.0, help="logit-normal scale")
    p.add_argument("--sigma", type=float, default=0.5, help="denoiser training noise level")
    p.add_argument("--pure-noise", action="store_true", help="denoiser on pure noise (average digit)")
    p.add_argument("--p-uncond", type=float, default=0.1, help="class dropout probability (CFG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast (CUDA, or a CPU with AVX-512 BF16 / AMX; float32 elsewhere, with a warning)",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (GPU; slower on a small CPU)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--init", help="start from this checkpoint's weights (same architecture) instead of random")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (smoke tests)")
    p.add_argument("--sample-epochs", default="1,5,last", help="epochs after which to write sample grids")
    p.add_argument("--keep-epochs", default="", help="epochs after which to keep a snapshot, e.g. 10,20")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out = Path(args.out)
    split = load_data(args)  # before the run folder exists: a failed start leaves no empty folder behind
    logger.info("data %s from %s: %d images", split.name, args.data, split.images.shape[0])
    cfg = TrainConfig(
        objective=args.objective,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        num_hiddens=args.hidden,
        scheduler=args.scheduler,
        gamma=args.gamma,
        sigma=args.sigma,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        pure_noise=args.pure_noise,
        p_uncond=args.p_uncond,
        time_density=args.time_density,
        t_loc=args.t_loc,
        t_scale=args.t_scale,
        ema_decay=args.ema_decay,
        ema_warmup=not args.no_ema_warmup,
        seed=args.seed,
        bf16=args.bf16,
        channels_last=args.channels_last,
        compile=args.compile,
        max_steps=args.max_steps,
    ).resolved()
    assert cfg.epochs is not None
    wanted = {cfg.epochs if s.strip() == "last" else int(s) for s in args.sample_epochs.split(",") if s.strip()}
    keep = {int(s) for s in args.keep_epochs.split(",") if s.strip()}
    fixed = split.images[torch.randperm(split.images.shape[0], generator=torch.Generator().manual_seed(1))[:10]]
    command = "python -m models.flow.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    history: list[dict[str, float]] = []

    def metadata(wall: float) -> dict:
        return {
            "command": command,
            "data": f"{args.data} ({split.name}, {split.images.shape[0]} images)",
            "train_config": asdict(cfg),
            "epochs": history,
            "wall_seconds": round(wall, 1),
            "device": str(device),
            "bf16_used": bool(cfg.bf16 and bf16_supported(device)),
            "weights": "EMA" if cfg.ema_decay > 0 else "trained",
            "machine": machine_description(device),
        }

    def on_epoch_end(model: FlowUNet, er: EpochResult) -> None:
        history.append(asdict(er))
        # a checkpoint after every epoch, so an interrupted run still leaves its latest weights
        save_model(model, model.config, out / "model.safetensors", metadata=metadata(time.perf_counter() - t0))
        if er.epoch in keep:
            save_model(
                model,
                model.config,
                out / f"model_epoch{er.epoch:03d}.safetensors",
                metadata=metadata(time.perf_counter() - t0),
            )
        if er.epoch in wanted or (cfg.max_steps is not None):
            imgs, ncols = sample_grid(model, cfg.objective, fixed, args.seed, cfg.sigma)
            save_grid(imgs, ncols, out / f"samples_epoch{er.epoch:03d}.png")

    init_state = None
    if args.init:
        init_model, init_cfg = load_model(args.init)
        if init_cfg.conditioning != OBJECTIVE_TO_CONDITIONING[cfg.objective] or init_cfg.num_hiddens != cfg.num_hiddens:
            raise SystemExit(
                f"--init {args.init} is {init_cfg}, which does not fit {cfg.objective} at D={cfg.num_hiddens}"
            )
        init_state = {k: v.float() if v.is_floating_point() else v for k, v in init_model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    t0 = time.perf_counter()
    result = train(
        cfg,
        split.images,
        split.labels,
        device=device,
        on_epoch_end=on_epoch_end,
        progress=not args.no_progress,
        init_state=init_state,
    )
    wall = time.perf_counter() - t0
    save_model(result.model, result.unet_config, out / "model.safetensors", metadata=metadata(wall))
    if result.raw_model is not None:
        save_model(
            result.raw_model,
            result.unet_config,
            out / "model_raw.safetensors",
            metadata={**metadata(wall), "weights": "trained (not averaged)"},
        )
    (out / "losses.json").write_text(json.dumps(result.losses) + "\n")
    save_loss_curve(result.losses, out / "loss.png", title=f"{cfg.objective}: per-step training loss")
    logger.info("done in %.1fs: %s", wall, out / "model.safetensors")
    return out


if __name__ == "__main__":
    main()
