"""ODE samplers for a learned flow-matching velocity field, and classifier-free guidance.

Notation: ``x_0 ~ N(0, I)`` noise at t = 0, data ``x_1`` at t = 1, the model's velocity
``v(x_t, t) ~ E[x_1 - x_0 | x_t]``. Sampling integrates ``dx/dt = v(x, t)`` from t = 0 to t = 1.

Solvers (k-diffusion style: short pure functions with one signature,
``solver(velocity, x, ts, callback=None) -> x``) on a time grid ``ts`` (K + 1,) from 0 to 1:

* :func:`euler`    -- 1 velocity evaluation per step.
* :func:`heun`     -- Heun's 2nd-order method (explicit trapezoid; Karras et al. 2022, alg. 1),
  2 evaluations per step.
* :func:`midpoint` -- explicit midpoint rule, 2 evaluations per step.

Counting: one "network evaluation" (NFE) is one call of ``velocity``, i.e. one batched forward of
the UNet; with classifier-free guidance that forward holds the conditional and the unconditional
half (2n images) at once. So Euler with K steps costs K NFE; Heun and midpoint cost 2K.

Classifier-free guidance (Ho & Salimans 2022, eq. 6, written for velocities):
``v = v_uncond + w (v_cond - v_uncond)``; w = 1 is the conditional estimate, w = 0 the unconditional.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from .inference import FlowNet
from .unet import FlowUNet

logger = logging.getLogger(__name__)

#: ``velocity(x_t, t) -> v``: x_t (B, C, H, W), t (B,) in [0, 1].
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``callback(step, total, x_t)`` after each solver step, step = 1..total.
StepCallback = Callable[[int, int, torch.Tensor], None]


class Solver(Protocol):
    def __call__(
        self, velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None
    ) -> torch.Tensor: ...


def time_grid(steps: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform grid ``ts`` (steps + 1,) float32 from 0 (noise) to 1 (data)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


def _t(ts: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
    return ts[i].to(x.dtype).expand(x.shape[0])


#: ``step(velocity, x, ts, i, dt) -> x`` from ``ts[i]`` to ``ts[i + 1]``, dt = ts[i + 1] - ts[i] in x's dtype.
_Step = Callable[[VelocityFn, torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]


def _integrate(step: _Step, velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor,
               callback: StepCallback | None) -> torch.Tensor:
    """The one solver loop: ``step`` over each interval of ``ts``, ``callback(i + 1, K, x)`` after each."""
    total = ts.shape[0] - 1
    for i in range(total):
        x = step(velocity, x, ts, i, (ts[i + 1] - ts[i]).to(x.dtype))
        if callback is not None:
            callback(i + 1, total, x)
    return x


def _euler_step(velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, i: int, dt: torch.Tensor) -> torch.Tensor:
    return x + dt * velocity(x, _t(ts, i, x))


def _heun_step(velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, i: int, dt: torch.Tensor) -> torch.Tensor:
    v0 = velocity(x, _t(ts, i, x))
    x_pred = x + dt * v0
    v1 = velocity(x_pred, _t(ts, i + 1, x))
    return x + dt * 0.5 * (v0 + v1)


def _midpoint_step(velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, i: int,
                   dt: torch.Tensor) -> torch.Tensor:
    t_mid = (0.5 * (ts[i] + ts[i + 1])).to(x.dtype).expand(x.shape[0])
    v0 = velocity(x, _t(ts, i, x))
    return x + dt * velocity(x + 0.5 * dt * v0, t_mid)


def euler(
    velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Explicit Euler: ``x <- x + (t_{i+1} - t_i) v(x, t_i)``.

    velocity: see :data:`VelocityFn`; x: (B, C, H, W) at ``ts[0]``; ts: (K + 1,) increasing.
    Returns (B, C, H, W) at ``ts[-1]``. K NFE.
    """
    return _integrate(_euler_step, velocity, x, ts, callback)


def heun(
    velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Heun's method: Euler predictor, trapezoidal corrector. Shapes as in :func:`euler`; 2K NFE."""
    return _integrate(_heun_step, velocity, x, ts, callback)


def midpoint(
    velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Explicit midpoint rule: ``x <- x + dt v(x + dt/2 v(x, t), t + dt/2)``. 2K NFE."""
    return _integrate(_midpoint_step, velocity, x, ts, callback)


#: Map request strings to solver functions at the edge.
SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun, "midpoint": midpoint}
#: Network evaluations per solver step.
EVALS_PER_STEP: dict[str, int] = {"euler": 1, "heun": 2, "midpoint": 2}


def nfe(method: str, steps: int) -> int:
    """Number of batched network evaluations ``method`` uses for ``steps`` steps."""
    return EVALS_PER_STEP[method] * steps


# ----------------------------------------------------------------------------------------------
# Model wrappers: adapt a FlowUNet to a VelocityFn.


class TimeVelocity:
    """``v(x_t, t)`` of a time-conditioned (or class model with a fixed class matrix ``c``) UNet.

    Runs the network in ``model``'s dtype and returns ``x_t``'s dtype.
    """

    def __init__(self, model: FlowUNet, c: torch.Tensor | None = None) -> None:
        self.model, self.c = model, c
        self.dtype = next(model.parameters()).dtype

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = None if self.c is None else self.c.to(self.dtype)
        return self.model(x_t.to(self.dtype), t.to(self.dtype), c).to(x_t.dtype)


class ClassifierFreeGuidance:
    """CFG velocity ``v_u + w (v_c - v_u)`` with both estimates from one batched forward pass.

    Args:
        model: a class-conditioned :class:`FlowUNet`.
        c: (B, K) one-hot classes for the conditional estimate (zeros = unconditional).
        scale: guidance scale w.
    ``__call__(x_t (B, C, H, W), t (B,)) -> (B, C, H, W)``; the network sees a batch of 2B.
    """

    def __init__(self, model: FlowUNet, c: torch.Tensor, scale: float) -> None:
        self.model, self.scale = model, float(scale)
        self.dtype = next(model.parameters()).dtype
        self.c_both = torch.cat([c, torch.zeros_like(c)]).to(self.dtype)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = self.model(torch.cat([x_t, x_t]).to(self.dtype), torch.cat([t, t]).to(self.dtype), self.c_both)
        v_cond, v_uncond = v.to(x_t.dtype).chunk(2)
        return v_uncond + self.scale * (v_cond - v_uncond)


class _EvalMode:
    """Put a module in eval mode for a block and restore its previous mode afterwards."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.was_training = module, module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


def generate(
    model: FlowUNet | FlowNet,
    *,
    n: int,
    digits: Sequence[int] | None,
    steps: int = 50,
    guidance: float = 5.0,
    method: str = "euler",
    generator: torch.Generator,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sample ``n`` images by integrating the learned ODE from t = 0 (noise) to t = 1 (data).

    Args:
        model: a "time" or "class" :class:`FlowUNet` (run in eval mode, restored afterwards), or the
            :class:`~models.flow.inference.FlowNet` that ``prepare_for_inference`` made of one (bf16 /
            channels-last / folded BN; guided requests then run the encoder once per evaluation).
        n: number of images.
        digits: length-n class labels for the class model (guided with ``guidance``); None for the
            time model (and gives unguided unconditional samples from a class model).
        steps: solver steps (NFE = steps for Euler, 2 * steps for Heun / midpoint).
        guidance: CFG scale w (class model only).
        method: a key of :data:`SOLVERS`.
        generator: seeded generator for the initial noise x_0 ~ N(0, I); it may live on the CPU
            while the model is on an accelerator (noise is drawn on the generator's device).
        callback: ``callback(step, total, x_t)`` after each step; exceptions it raises propagate.
    Returns:
        (n, C, S, S) float32 in [0, 1] on the model's device.
    """
    cfg = model.config
    if cfg.conditioning == "none":
        raise ValueError("generate() needs a time- or class-conditioned model, got an unconditional denoiser")
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(SOLVERS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    param = next(model.parameters())
    device = param.device

    if digits is not None:
        if cfg.conditioning != "class":
            raise ValueError("digits given, but the model is not class-conditioned")
        if len(digits) != n:
            raise ValueError(f"digits has length {len(digits)}, expected n = {n}")
        labels = torch.as_tensor(list(digits), dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
            raise ValueError(f"digits must be in 0..{cfg.num_classes - 1}")

    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)
    ts = time_grid(steps, device=device)

    with _EvalMode(model), torch.no_grad():
        if digits is not None:
            c = F.one_hot(labels.to(device), cfg.num_classes).float()
            if isinstance(model, FlowNet):  # encoder once, decoder on the 2n guided rows
                velocity: VelocityFn = model.guided_velocity(c, guidance)
            else:
                velocity = ClassifierFreeGuidance(model, c, guidance)
        elif cfg.conditioning == "class":
            velocity = TimeVelocity(model, torch.zeros((n, cfg.num_classes), device=device))
        else:
            velocity = TimeVelocity(model)
        x = SOLVERS[method](velocity, x, ts, callback)
    return x.clamp(0.0, 1.0)
