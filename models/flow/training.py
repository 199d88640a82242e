"""The training loop for the three UNet variants (no files, no PIL: the CLI in ``train.py`` does I/O).

Objectives (see :mod:`models.flow.objectives`):

* ``"denoise"`` -- one-step denoiser, ``x_noisy = x + sigma z``, L2 to the clean digit.
* ``"time"``    -- flow matching, ``x_t = (1 - t) x_0 + t x_1``, target ``x_1 - x_0``, t ~ U[0, 1].
* ``"class"``   -- the same with a one-hot class, zeroed with probability ``p_uncond`` (CFG).

Optimiser: Adam at ``lr`` with one of the schedules

* ``"exponential"`` -- ``ExponentialLR(gamma)`` stepped once per epoch (gamma defaults to
  ``0.1 ** (1 / epochs)``, i.e. lr decays 10x over the run);
* ``"cosine"`` -- per optimiser step: linear warm-up over ``warmup_steps``, then half a cosine from
  ``lr`` to ``lr * min_lr_ratio`` at the last step (Loshchilov & Hutter 2017, without restarts);
* ``"constant"`` -- linear warm-up over ``warmup_steps``, then ``lr``;
* ``"none"`` -- AdamW at ``lr / 10`` and a constant rate (the seed's ablation).

Optional: an EMA of the weights (:mod:`models.flow.ema`, ``ema_decay > 0``) -- the EMA copy is what
:attr:`TrainResult.model` returns and what the CLI saves; training times t from a uniform or
logit-normal density (:func:`models.flow.objectives.sample_t`); bf16 autocast and channels-last on
CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX; ``bf16`` is ignored with a warning elsewhere).

Reproducible: model init under a forked global RNG seeded with ``seed``; every random draw of the
loop (shuffling, noise, t, label dropout) comes from seeded ``torch.Generator`` objects.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .ema import EMA
from .inference import bf16_supported
from .objectives import TimeDensity, denoiser_loss, drop_labels, flow_matching_loss, sample_t
from .unet import FlowUNet, UNetConfig

logger = logging.getLogger(__name__)

Objective = Literal["denoise", "time", "class"]
OBJECTIVE_TO_CONDITIONING = {"denoise": "none", "time": "time", "class": "class"}


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. ``None`` fields take the objective's default (see :func:`defaults_for`)."""

    objective: Objective = "time"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    num_hiddens: int | None = None
    scheduler: Literal["exponential", "cosine", "constant", "none"] = "exponential"
    gamma: float | None = None  # ExponentialLR factor; default 0.1 ** (1 / epochs)
    warmup_steps: int = 0  # linear lr warm-up ("cosine" and "constant")
    min_lr_ratio: float = 0.0  # final lr / lr for "cosine"
    sigma: float = 0.5  # denoiser noise level
    pure_noise: bool = False  # denoiser trained on pure noise ("average digit")
    p_uncond: float = 0.1  # class dropout probability for CFG
    time_density: TimeDensity = "uniform"  # training t density (flow objectives)
    t_loc: float = 0.0  # logit-normal location m
    t_scale: float = 1.0  # logit-normal scale s
    ema_decay: float = 0.0  # EMA of the weights (0 = off); the EMA copy is the result
    ema_warmup: bool = True  # d_k = min(decay, (1 + k) / (10 + k))
    seed: int = 0
    bf16: bool = False  # bf16 autocast (CUDA, or a CPU with native bf16)
    channels_last: bool = False  # channels-last memory format
    compile: bool = False  # torch.compile the forward pass (pays off on a GPU; slower on the 2-core CPU)
    max_steps: int | None = None  # stop early after this many optimiser steps (smoke tests)

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` replaced by the objective's default."""
        d = defaults_for(self.objective)
        out = TrainConfig(**{k: (d[k] if v is None and k in d else v) for k, v in asdict(self).items()})
        if out.gamma is None:
            out.gamma = 0.1 ** (1.0 / max(1, out.epochs or 1))
        return out


def defaults_for(objective: str) -> dict[str, Any]:
    """Seed defaults: denoiser D=128, Adam 1e-4, batch 256, 5 epochs; flow D=64, batch 64, Adam 1e-2, 10 epochs."""
    if objective == "denoise":
        return {"epochs": 5, "batch_size": 256, "lr": 1e-4, "num_hiddens": 128}
    if objective in ("time", "class"):
        return {"epochs": 10, "batch_size": 64, "lr": 1e-2, "num_hiddens": 64}
    raise ValueError(f"unknown objective {objective!r}")


@dataclass
class EpochResult:
    """What the loop reports after each epoch."""

    epoch: int
    mean_loss: float
    lr: float
    seconds: float
    images: int


@dataclass
class TrainResult:
    """The trained model and its history."""

    model: FlowUNet  # the EMA copy when ema_decay > 0, else the trained weights (eval mode)
    unet_config: UNetConfig
    train_config: TrainConfig
    losses: list[float] = field(default_factory=list)  # per optimiser step
    epochs: list[EpochResult] = field(default_factory=list)
    seconds: float = 0.0
    raw_model: FlowUNet | None = None  # the trained (non-averaged) weights when EMA is on


def build_seeded_model(config: UNetConfig, seed: int) -> FlowUNet:
    """A fresh :class:`FlowUNet` whose initial weights depend only on ``seed``.

    ``nn.Module`` initialisers draw from the global RNG; we fork it so the caller's state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FlowUNet(config)


#: Schedules stepped after every optimiser step (the others once per epoch).
PER_STEP_SCHEDULERS = ("cosine", "constant")


def lr_factor(step: int, total: int, *, scheduler: str, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr for optimiser step ``step`` (0-based) of ``total`` ("cosine" / "constant").

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Cosine afterwards:
    ``r + (1 - r) (1 + cos(pi p)) / 2`` with ``p`` going from 0 (first step after warm-up) to 1 (last step)
    and ``r = min_lr_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    if scheduler != "cosine":
        raise ValueError(f"lr_factor is for 'cosine' and 'constant', got {scheduler!r}")
    span = max(1, total - warmup_steps - 1)
    p = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, total_steps: int = 1
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimiser and its schedule (see the module docstring).

    Returns ``(opt, sched)``; ``sched`` is stepped once per epoch for "exponential" and once per
    optimiser step for "cosine" / "constant" (see :data:`PER_STEP_SCHEDULERS`), None for "none".
    """
    assert cfg.lr is not None and cfg.gamma is not None
    if cfg.scheduler == "none":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr / 10), None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.scheduler == "exponential":
        return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    if cfg.scheduler in ("cosine", "constant"):
        scheduler, warmup, floor = cfg.scheduler, cfg.warmup_steps, cfg.min_lr_ratio
        return opt, torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total_steps, scheduler=scheduler, warmup_steps=warmup, min_lr_ratio=floor)
        )
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}")


def train(
    cfg: TrainConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    on_epoch_end: Callable[[FlowUNet, EpochResult], None] | None = None,
    progress: bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train a UNet for ``cfg.objective`` on ``images`` (N, 1, S, S) in [0, 1], ``labels`` (N,) int64.

    The whole data set is moved to ``device`` once and shuffled per epoch with a seeded generator.
    ``on_epoch_end(model, result)`` is called after every epoch with the model to save (the EMA copy
    when EMA is on; the live model is put back in train mode after it returns). The lr in
    :class:`EpochResult` is the rate the epoch's last optimiser step used. ``init_state`` (a state dict of the same architecture) starts from trained
    weights instead of a fresh initialisation (fine-tuning). Returns a :class:`TrainResult`.
    """
    cfg = cfg.resolved()
    assert cfg.epochs and cfg.batch_size and cfg.num_hiddens and cfg.lr
    device = torch.device(device)
    use_bf16 = cfg.bf16 and bf16_supported(device)
    if cfg.bf16 and not use_bf16:
        logger.warning("bf16 requested but %s has no native bf16: training in float32", device)
    unet_cfg = UNetConfig(
        conditioning=OBJECTIVE_TO_CONDITIONING[cfg.objective],  # type: ignore[arg-type]
        num_hiddens=cfg.num_hiddens,
        in_channels=images.shape[1],
        image_size=images.shape[-1],
        num_classes=10,
    )
    model = build_seeded_model(unet_cfg, cfg.seed)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # type: ignore[call-overload]  # nn.Module.to takes it

    data = images.to(device).contiguous(memory_format=memory_format)
    targets = labels.to(device)
    n = data.shape[0]
    shuffle_gen = torch.Generator().manual_seed(cfg.seed)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = (
        cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    )
    opt, sched = make_optimizer(model, cfg, total_steps)
    fwd = torch.compile(model) if cfg.compile else model  # shares the parameters with model
    per_step = cfg.scheduler in PER_STEP_SCHEDULERS
    ema = EMA(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay > 0 else None
    result = TrainResult(model, unet_cfg, cfg)

    def draw_t(b: int, like: torch.Tensor) -> torch.Tensor | None:
        """Training times for a batch, or None to let the loss draw t ~ U[0, 1] (the original stream)."""
        if cfg.time_density == "uniform":
            return None
        return sample_t(
            b,
            density=cfg.time_density,
            loc=cfg.t_loc,
            scale=cfg.t_scale,
            generator=noise_gen,
            device=like.device,
            dtype=like.dtype,
        )

    logger.info("training %s: %d images, %d steps/epoch, %s", cfg.objective, n, steps_per_epoch, cfg)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * steps_per_epoch, unit="step", dynamic_ncols=True)
    t_start = time.perf_counter()
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t_epoch = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        epoch_losses: list[torch.Tensor] = []
        seen = 0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x_1 = data[idx]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if cfg.objective == "denoise":
                    loss = denoiser_loss(fwd, x_1, cfg.sigma, generator=noise_gen, pure_noise=cfg.pure_noise)
                elif cfg.objective == "time":
                    loss = flow_matching_loss(fwd, x_1, generator=noise_gen, t=draw_t(x_1.shape[0], x_1))
                else:
                    c = F.one_hot(targets[idx], unet_cfg.num_classes).to(x_1.dtype)
                    c = drop_labels(c, cfg.p_uncond, generator=noise_gen)
                    loss = flow_matching_loss(partial(fwd, c=c), x_1, generator=noise_gen, t=draw_t(x_1.shape[0], x_1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr = opt.param_groups[0]["lr"]  # the rate this step used
            if sched is not None and per_step:
                sched.step()
            if ema is not None:
                ema.update(model)
            epoch_losses.append(loss.detach())
            seen += x_1.shape[0]
            step += 1
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        if sched is not None and not per_step:
            sched.step()
        losses = torch.stack(epoch_losses).float().cpu()
        result.losses.extend(losses.tolist())
        er = EpochResult(epoch, float(losses.mean()), lr, time.perf_counter() - t_epoch, seen)
        result.epochs.append(er)
        logger.info(
            "epoch %d/%d loss %.5f lr %.2e %.1fs (%.1f img/s)",
            epoch,
            cfg.epochs,
            er.mean_loss,
            er.lr,
            er.seconds,
            er.images / max(er.seconds, 1e-9),
        )
        if on_epoch_end is not None:
            on_epoch_end(model if ema is None else ema.model, er)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    if bar is not None:
        bar.close()
    model.eval()
    if ema is not None:
        result.model, result.raw_model = ema.model, model
    result.seconds = time.perf_counter() - t_start
    return result
