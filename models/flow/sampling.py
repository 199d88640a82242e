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

One solver loop: an ODE solve is a resumable request (:class:`FlowRequest`) with a step rule (Euler, Heun,
midpoint), driven by the step driver (``models.driver``) alone or batched with other requests on the same
network (rows with their own times and classes), with the same arithmetic in the same order either way.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, cast

import torch
import torch.nn.functional as F

from ..driver import Runner, drive
from .inference import FlowNet
from .unet import FlowUNet

logger = logging.getLogger(__name__)

#: ``velocity(x_t, t) -> v``: x_t (B, C, H, W), t (B,) in [0, 1].
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``callback(step, total, x_t, preview)`` after each solver step, step = 1..total; ``preview`` is the
#: current sample clamped to the data range [0, 1] (for previews).
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


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


# ----------------------------------------------------------------------------------------------
# Step rules. A solver step from ts[i] to ts[i + 1] evaluates the velocity at ``evals`` points, each point
# computed from the earlier velocities ``vs``, then combines them; the step driver runs one network forward
# per evaluation (so a Heun step is two driver steps).


class StepRule(Protocol):
    evals: int

    def point(
        self, x: torch.Tensor, ts: torch.Tensor, i: int, dt: torch.Tensor, vs: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, t (B,)) of evaluation ``len(vs)``."""
        ...

    def update(self, x: torch.Tensor, dt: torch.Tensor, vs: list[torch.Tensor]) -> torch.Tensor:
        """The sample at ts[i + 1] from the ``evals`` velocities."""
        ...


class _Euler:
    """Explicit Euler: ``x <- x + dt v(x, t_i)``."""

    evals = 1

    def point(self, x, ts, i, dt, vs):
        return x, _t(ts, i, x)

    def update(self, x, dt, vs):
        return x + dt * vs[0]


class _Heun:
    """Heun (explicit trapezoid; Karras et al. 2022, alg. 1): Euler predictor, trapezoidal corrector."""

    evals = 2

    def point(self, x, ts, i, dt, vs):
        return (x, _t(ts, i, x)) if not vs else (x + dt * vs[0], _t(ts, i + 1, x))

    def update(self, x, dt, vs):
        return x + dt * 0.5 * (vs[0] + vs[1])


class _Midpoint:
    """Explicit midpoint rule: ``x <- x + dt v(x + dt/2 v(x, t), t + dt/2)``."""

    evals = 2

    def point(self, x, ts, i, dt, vs):
        if not vs:
            return x, _t(ts, i, x)
        return x + 0.5 * dt * vs[0], (0.5 * (ts[i] + ts[i + 1])).to(x.dtype).expand(x.shape[0])

    def update(self, x, dt, vs):
        return x + dt * vs[1]


#: Map request strings to step rules at the edge.
RULES: dict[str, StepRule] = {"euler": _Euler(), "heun": _Heun(), "midpoint": _Midpoint()}


# ----------------------------------------------------------------------------------------------
# The solver as a resumable request (``models.driver``).


class VelocityGuide(Protocol):
    """How a request turns one sample into network inputs and the network's rows back into one velocity."""

    network: Any

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def combine(self, output: torch.Tensor) -> torch.Tensor: ...


class _FunctionNetwork:
    """A plain ``velocity(x, t)`` as a one-request network (never shares a forward)."""

    def __init__(self, velocity: VelocityFn) -> None:
        self.velocity = velocity
        self.network = self

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.velocity(x, t)

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x_t, "t": t}

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        return output


@dataclass(eq=False)
class FlowRequest:
    """One ODE solve from t = ts[0] to ts[-1] as a resumable state: one network evaluation per ``advance``.

    Attributes:
        x: (B, C, H, W) the sample at ``ts[i]`` (replaced, never written in place).
        ts: (K + 1,) increasing time grid.
        rule: the step rule (Euler, Heun, midpoint).
        guide: the velocity's network and how rows map to it (``VelocityGuide``), or a plain ``velocity(x, t)``.
        callback: ``callback(step, total, x_t, preview)`` after each solver step; exceptions end the request.
    """

    x: torch.Tensor
    ts: torch.Tensor
    rule: StepRule
    guide: Any
    callback: StepCallback | None = None
    i: int = 0
    vs: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not all(hasattr(self.guide, name) for name in ("inputs", "combine", "network")):
            self.guide = _FunctionNetwork(self.guide)

    @property
    def network(self) -> Any:
        return self.guide.network

    @property
    def total(self) -> int:
        return int(self.ts.shape[0]) - 1

    def _dt(self) -> torch.Tensor:
        return (self.ts[self.i + 1] - self.ts[self.i]).to(self.x.dtype)

    def inputs(self) -> dict[str, torch.Tensor]:
        x_eval, t_eval = self.rule.point(self.x, self.ts, self.i, self._dt(), self.vs)
        inputs: dict[str, torch.Tensor] = self.guide.inputs(x_eval, t_eval)
        return inputs

    def advance(self, output: torch.Tensor) -> bool:
        self.vs.append(self.guide.combine(output))
        if len(self.vs) < self.rule.evals:
            return False
        self.x, self.vs, self.i = self.rule.update(self.x, self._dt(), self.vs), [], self.i + 1
        if self.callback is not None:
            self.callback(self.i, self.total, self.x, self.x.clamp(0.0, 1.0))
        return self.i == self.total


def solve(
    rule: str,
    guide: Any,
    x: torch.Tensor,
    ts: torch.Tensor,
    callback: StepCallback | None = None,
    *,
    runner: Runner | None = None,
) -> torch.Tensor:
    """Integrate from ``ts[0]`` to ``ts[-1]`` with the step rule ``rule`` (a key of ``RULES``).

    guide: a ``VelocityGuide`` or a plain ``velocity(x, t)``; x: (B, C, H, W) at ``ts[0]``; ts: (K + 1,)
    increasing. ``runner`` runs the request (``models.driver.drive`` alone by default, or a shared batcher).
    Returns (B, C, H, W) at ``ts[-1]``.
    """
    if ts.shape[0] < 2:
        return x
    request = FlowRequest(x, ts, RULES[rule], guide, callback)
    (runner or drive)(request)
    return request.x


def euler(
    velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Explicit Euler: ``x <- x + (t_{i+1} - t_i) v(x, t_i)``.

    velocity: see :data:`VelocityFn`; x: (B, C, H, W) at ``ts[0]``; ts: (K + 1,) increasing.
    Returns (B, C, H, W) at ``ts[-1]``. K NFE.
    """
    return solve("euler", velocity, x, ts, callback)


def heun(velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """Heun's method: Euler predictor, trapezoidal corrector. Shapes as in :func:`euler`; 2K NFE."""
    return solve("heun", velocity, x, ts, callback)


def midpoint(
    velocity: VelocityFn, x: torch.Tensor, ts: torch.Tensor, callback: StepCallback | None = None
) -> torch.Tensor:
    """Explicit midpoint rule: ``x <- x + dt v(x + dt/2 v(x, t), t + dt/2)``. 2K NFE."""
    return solve("midpoint", velocity, x, ts, callback)


#: Map request strings to solver functions at the edge.
SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun, "midpoint": midpoint}
#: Network evaluations per solver step.
EVALS_PER_STEP: dict[str, int] = {name: rule.evals for name, rule in RULES.items()}


def nfe(method: str, steps: int) -> int:
    """Number of batched network evaluations ``method`` uses for ``steps`` steps."""
    return EVALS_PER_STEP[method] * steps


# ----------------------------------------------------------------------------------------------
# Model wrappers: a FlowUNet as the driver's network, and the velocities of a request.


class UNetNetwork:
    """A plain :class:`FlowUNet` as a network of the step driver: ``net(x, t, c=None)`` with per-row times t (N,)
    and classes c (N, K), run in the model's dtype without gradients, returned in ``x``'s dtype. (The fast
    path, :class:`~models.flow.inference.FlowNet`, has its own calls: :class:`FastGuided`, :class:`FastPlain`.)

    One object per model (:meth:`of`): requests that use the same model share a forward (``key``).
    """

    def __init__(self, model: FlowUNet) -> None:
        self.model = model
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def of(cls, model: FlowUNet) -> UNetNetwork:
        net = _NETS.get(model)
        if net is None:
            net = _NETS[model] = cls(model)
        return net

    @property
    def key(self) -> FlowUNet:
        return self.model

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.model(x.to(self.dtype), t.to(self.dtype), None if c is None else c.to(self.dtype))
        return out.to(x.dtype)


_NETS: weakref.WeakKeyDictionary[FlowUNet, UNetNetwork] = weakref.WeakKeyDictionary()


class TimeVelocity:
    """``v(x_t, t)`` of a time-conditioned (or class model with a fixed class matrix ``c``) UNet.

    Runs the network in ``model``'s dtype and returns ``x_t``'s dtype.
    """

    network: Callable[..., torch.Tensor]

    def __init__(self, model: FlowUNet, c: torch.Tensor | None = None) -> None:
        self.network, self.c = UNetNetwork.of(model), c

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x_t, "t": t} | ({} if self.c is None else {"c": self.c})

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.combine(self.network(**self.inputs(x_t, t)))


class ClassifierFreeGuidance:
    """CFG velocity ``v_u + w (v_c - v_u)`` with both estimates from one batched forward pass.

    Args:
        model: a class-conditioned :class:`FlowUNet`.
        c: (B, K) one-hot classes for the conditional estimate (zeros = unconditional).
        scale: guidance scale w.
    ``__call__(x_t (B, C, H, W), t (B,)) -> (B, C, H, W)``; the network sees a batch of 2B.
    """

    def __init__(self, model: FlowUNet, c: torch.Tensor, scale: float) -> None:
        self.network, self.scale = UNetNetwork.of(model), float(scale)
        self.c_both = torch.cat([c, torch.zeros_like(c)]).to(self.network.dtype)

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": torch.cat([x_t, x_t]), "t": torch.cat([t, t]), "c": self.c_both}

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        v_cond, v_uncond = output.chunk(2)
        return v_uncond + self.scale * (v_cond - v_uncond)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.combine(self.network(**self.inputs(x_t, t)))


class _FastCall:
    """One way of calling a fast :class:`~models.flow.inference.FlowNet` as a network of the step driver; one
    object per net and way (``of``), so that requests on the same net share a forward (``key``)."""

    guided: bool = False

    def __init__(self, net: FlowNet) -> None:
        self.net = net

    @classmethod
    def of(cls, net: FlowNet) -> Self:
        cache = _FAST.setdefault(net, {})
        call = cache.get(cls)
        if call is None:
            call = cache[cls] = cls(net)
        return cast(Self, call)

    @property
    def key(self) -> tuple[FlowNet, bool]:
        return self.net, self.guided


class _FastGuidedCall(_FastCall):
    guided = True

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.net.guided(x, t, c, scale)


class _FastPlainCall(_FastCall):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, t, c)


_FAST: weakref.WeakKeyDictionary[FlowNet, dict[type, _FastCall]] = weakref.WeakKeyDictionary()


class FastGuided:
    """Classifier-free guidance on the fast path: each row carries its class and its scale, and the net runs
    the condition-free encoder once and the decoder on the conditional and unconditional rows
    (``FlowNet.guided``), so rows of requests with different digits and guidance share one call."""

    def __init__(self, net: FlowNet, c: torch.Tensor, scale: float) -> None:
        self.network, self.c = _FastGuidedCall.of(net), c
        self.scale = torch.full((c.shape[0],), float(scale), device=c.device)

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x_t, "t": t, "c": self.c, "scale": self.scale}

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        return output.to(self.c.dtype)


class FastPlain(TimeVelocity):
    """The plain velocity on the fast path (a time model, or a class model with all-zero class rows): the rows
    and rule of :class:`TimeVelocity`, the network call of the :class:`~models.flow.inference.FlowNet`."""

    def __init__(self, net: FlowNet, c: torch.Tensor | None = None) -> None:
        self.network, self.c = _FastPlainCall.of(net), c


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
    runner: Runner | None = None,
) -> torch.Tensor:
    """Sample ``n`` images by integrating the learned ODE from t = 0 (noise) to t = 1 (data).

    Args:
        model: a "time" or "class" :class:`FlowUNet` (run in eval mode, restored afterwards), or the
            :class:`~models.flow.inference.FlowNet` that ``prepare_for_inference`` made of one (folded BN,
            channels-last, bf16 where native; a guided request then runs the encoder once per evaluation).
        n: number of images.
        digits: length-n class labels for the class model (guided with ``guidance``); None for the
            time model (and gives unguided unconditional samples from a class model).
        steps: solver steps (NFE = steps for Euler, 2 * steps for Heun / midpoint).
        guidance: CFG scale w (class model only).
        method: a key of :data:`SOLVERS`.
        generator: seeded generator for the initial noise x_0 ~ N(0, I); it may live on the CPU
            while the model is on an accelerator (noise is drawn on the generator's device).
        callback: ``callback(step, total, x_t, preview)`` after each step; exceptions it raises propagate.
        runner: runs the ODE solve (``models.driver.drive`` alone by default; a worker's batcher puts the
            rows of many requests into one forward).
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
            guide: Any = (
                FastGuided(model, c, guidance)
                if isinstance(model, FlowNet)
                else ClassifierFreeGuidance(model, c, guidance)
            )
        else:
            zeros = torch.zeros((n, cfg.num_classes), device=device) if cfg.conditioning == "class" else None
            guide = FastPlain(model, zeros) if isinstance(model, FlowNet) else TimeVelocity(model, zeros)
        x = solve(method, guide, x, ts, callback, runner=runner)
    return x.clamp(0.0, 1.0)
