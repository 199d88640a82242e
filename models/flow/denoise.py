"""The one-step denoiser experiments, as functions and a CLI.

A one-step denoiser ``D(x_noisy) ~ x`` is trained at a single noise level (``x_noisy = x + sigma z``,
sigma = 0.5; ``python -m models.flow.train --objective denoise``). Two experiments:

* :func:`denoise_sweep` -- the out-of-distribution test: denoise the same digits noised at
  sigma in {0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0}, with the same z for every sigma.
* :func:`average_digit` -- a denoiser trained on pure noise (``--pure-noise``) outputs the L2-optimal
  constant, the mean training digit, whatever the input.

CLI (writes ``sweep.png``: for each sigma a row of noisy inputs above a row of outputs, and
``average_digit.png``)::

    python -m models.flow.denoise --checkpoint runs/denoiser/model.safetensors \
        --pure-noise-checkpoint runs/avg/model.safetensors --out results/denoise
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .unet import FlowUNet

logger = logging.getLogger("models.flow.denoise")

SWEEP_SIGMAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


@dataclass
class SweepResult:
    """noisy and denoised: (S, N, C, H, W) for S sigmas and N digits; sigmas: (S,)."""

    sigmas: tuple[float, ...]
    noisy: torch.Tensor
    denoised: torch.Tensor
    mse: list[float]  # per sigma, denoised vs clean


@torch.no_grad()
def denoise_sweep(
    model: FlowUNet,
    images: torch.Tensor,
    sigmas: Sequence[float] = SWEEP_SIGMAS,
    *,
    generator: torch.Generator,
) -> SweepResult:
    """Denoise ``images`` (N, C, H, W) in [0, 1] noised at each sigma (one shared z ~ N(0, I)).

    The model runs in eval mode (its mode is restored afterwards).
    """
    if model.config.conditioning != "none":
        raise ValueError("denoise_sweep needs an unconditional (one-step denoiser) UNet")
    device = next(model.parameters()).device
    x = images.to(device)
    z = torch.randn(x.shape, generator=generator, device=generator.device).to(device)
    was = model.training
    model.eval()
    try:
        noisy = torch.stack([x + s * z for s in sigmas])
        den = torch.stack([model(n) for n in noisy])
    finally:
        model.train(was)
    mse = [float(((d - x) ** 2).mean()) for d in den]
    return SweepResult(tuple(sigmas), noisy, den, mse)


@torch.no_grad()
def average_digit(model: FlowUNet, n: int, *, generator: torch.Generator) -> torch.Tensor:
    """Outputs (n, C, S, S) of a denoiser for pure-noise inputs z ~ N(0, I)."""
    cfg = model.config
    device = next(model.parameters()).device
    z = torch.randn(
        (n, cfg.in_channels, cfg.image_size, cfg.image_size), generator=generator, device=generator.device
    ).to(device)
    was = model.training
    model.eval()
    try:
        return model(z)
    finally:
        model.train(was)


def sweep_grid_rows(result: SweepResult) -> torch.Tensor:
    """(2S * N, C, H, W) in [0, 1]: for each sigma a row of noisy inputs, then a row of outputs."""
    rows = []
    for noisy, den in zip(result.noisy, result.denoised, strict=True):
        rows += [noisy.clamp(0, 1), den.clamp(0, 1)]
    return torch.cat(rows)


def main(argv: list[str] | None = None) -> None:
    from .checkpoint import load_model
    from .pngio import save_grid
    from .train import add_data_arguments, load_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="denoiser trained at sigma 0.5 (.safetensors)")
    p.add_argument("--pure-noise-checkpoint", help="denoiser trained on pure noise (.safetensors)")
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="folder for the PNG grids")
    p.add_argument("--n", type=int, default=10, help="digits per row")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if not (args.checkpoint or args.pure_noise_checkpoint):
        p.error("give --checkpoint and/or --pure-noise-checkpoint")
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
        data = load_data(args)
        pick = torch.randperm(data.images.shape[0], generator=torch.Generator().manual_seed(args.seed))[: args.n]
        res = denoise_sweep(model, data.images[pick], generator=torch.Generator().manual_seed(args.seed))
        save_grid(sweep_grid_rows(res), args.n, out / "sweep.png")
        for s, m in zip(res.sigmas, res.mse, strict=True):
            logger.info("sigma %.1f: MSE to clean %.4f", s, m)
    if args.pure_noise_checkpoint:
        model, _ = load_model(args.pure_noise_checkpoint)
        avg = average_digit(model, args.n, generator=torch.Generator().manual_seed(args.seed))
        save_grid(avg.clamp(0, 1), args.n, out / "average_digit.png")
        logger.info("average digit grid -> %s", out / "average_digit.png")


if __name__ == "__main__":
    main()
