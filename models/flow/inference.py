"""The inference fast path of a trained :class:`~models.flow.unet.FlowUNet`: one call per batch of rows.

:func:`prepare_for_inference` turns a trained network into a :class:`FlowNet`, a frozen callable

    net(x, t, c=None) -> v        x (B, C, S, S) float32, t (B,), c (B, K) or None -> v (B, C, S, S) float32

whose rows are independent (each has its own t and class row, so rows of different requests can
share one call), plus ``net.guided(x, t, c, scale)``, classifier-free guidance (Ho & Salimans 2022,
eq. 6, for velocities: ``v = v_u + w (v_c - v_u)``) that runs the condition-free encoder once for the
B images and only the decoder on the 2B conditional + unconditional rows.

What makes a call cheap on a CPU (each measured in ``BENCHMARKS.md``):

* BatchNorm folded into the convolution before it (eval-mode BN is an affine map per channel):
  ``W' = W g / sqrt(var + eps)``, ``b' = (b - mean) g / sqrt(var + eps) + beta``; one pass less per layer.
* ``torch.inference_mode`` (no autograd bookkeeping).
* channels-last activations (oneDNN's native layout for convolutions).
* bfloat16 autocast where the hardware has native bf16 arithmetic: CUDA devices that support it,
  x86 CPUs with AVX-512 BF16 or AMX-BF16 (:func:`bf16_supported`). Elsewhere bf16 would be emulated
  and slower than float32, so ``dtype="auto"`` keeps float32. Inputs and outputs stay float32.
* optionally ``torch.compile`` (inductor) with dynamic batch size; on a CPU it costs tens of seconds
  at start-up for a gain of about 15 % per call, so it is off by default.

Determinism: for a given batch (same rows, same order, same thread count) the result is bitwise
reproducible; a row's result may differ in the last bits between batch sizes (kernels block
differently), within the tolerances the tests state.

Notation as in :mod:`models.flow.sampling`: x_0 noise at t = 0, data x_1 at t = 1.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from .unet import FlowUNet, UNetConfig

logger = logging.getLogger(__name__)

Precision = Literal["auto", "bfloat16", "float32"]
PRECISIONS: tuple[str, ...] = ("auto", "bfloat16", "float32")

#: ``capabilities() -> {"avx512_bf16": bool, "amx_bf16": bool, ...}``, as ``torch.cpu.get_capabilities``.
CapabilitiesFn = Callable[[], dict]


def _cpu_capabilities() -> dict:
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # older torch
    return {"avx512_bf16": bool(probe()) if probe is not None else False}


def bf16_supported(device: torch.device | str = "cpu", *, capabilities: CapabilitiesFn | None = None) -> bool:
    """Whether ``device`` computes bfloat16 natively (so bf16 autocast is faster, not emulated).

    CPU: AVX-512 BF16 or AMX-BF16 in ``capabilities()`` (default ``torch.cpu.get_capabilities``;
    injectable for tests). CUDA: ``torch.cuda.is_bf16_supported()``. Anything else: False.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    caps = (capabilities or _cpu_capabilities)()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_dtype(
    dtype: Precision | torch.dtype, device: torch.device | str = "cpu", *, capabilities: CapabilitiesFn | None = None
) -> torch.dtype:
    """``"auto"`` -> bfloat16 where :func:`bf16_supported`, else float32; names and dtypes pass through.

    An explicit ``"bfloat16"`` is honoured even without native support (slow, but what was asked).
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"compute dtype must be float32 or bfloat16, got {dtype}")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if bf16_supported(device, capabilities=capabilities) else torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float32":
        return torch.float32
    raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}")


# ----------------------------------------------------------------------------------------------
# BatchNorm folding


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (conv is a private copy)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    w = conv.weight
    # Conv2d weight (out, in, kh, kw); ConvTranspose2d weight (in, out / groups, kh, kw)
    if isinstance(conv, nn.ConvTranspose2d):
        if conv.groups != 1:
            raise ValueError("folding into a grouped ConvTranspose2d is not supported")
        w_new = w * scale[None, :, None, None]
    else:
        w_new = w * scale[:, None, None, None]
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    b_new = (b - bn.running_mean) * scale + shift
    conv.weight = nn.Parameter(w_new.detach())
    conv.bias = nn.Parameter(b_new.detach())


@torch.no_grad()
def fold_batchnorm(model: FlowUNet) -> FlowUNet:
    """An eval-mode copy of ``model`` with every ``(Conv, BatchNorm2d)`` pair of a block folded.

    The blocks of :mod:`models.flow.unet` are ``nn.Sequential(conv, bn, gelu)``; the BN becomes
    ``nn.Identity``. The copy computes the eval-mode function of ``model`` (to float rounding);
    ``model`` is not modified.
    """
    out = copy.deepcopy(model).float().eval()
    for module in out.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            a, b = module[i], module[i + 1]
            if isinstance(a, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(b, nn.BatchNorm2d):
                _fold(a, b)
                module[i + 1] = nn.Identity()
    return out


# ----------------------------------------------------------------------------------------------


class FlowNet(nn.Module):
    """A frozen, inference-only velocity network; build it with :func:`prepare_for_inference`.

    ``net(x, t, c=None)``: x (B, C, S, S) float (any float dtype; computed in :attr:`dtype`),
    t (B,) in [0, 1] (a scalar or a (1,) tensor is broadcast to every row), c (B, K) one-hot rows
    or all-zero rows ("no class"; None means all rows unconditional) for a class model, None for a
    time model. Returns (B, C, S, S) float32 velocities, an ordinary tensor (usable outside
    inference mode).

    ``net.guided(x, t, c, scale)``: classifier-free guidance with a per-row or scalar scale; see
    :meth:`guided`.

    It looks like the :class:`FlowUNet` it wraps where :func:`models.flow.sampling.generate` needs
    it (``config``, ``parameters()``, ``eval()``), so ``generate(net, ...)`` works and uses
    :meth:`guided` for guided requests.

    Attributes:
        config: the :class:`UNetConfig` of the wrapped network.
        dtype: the compute dtype (float32 or bfloat16 autocast).
        channels_last: whether activations run in channels-last layout.
        compiled: whether the forward functions went through ``torch.compile``.
    """

    def __init__(self, net: FlowUNet, *, dtype: torch.dtype, channels_last: bool, compile: bool = False) -> None:
        super().__init__()
        self.training = False
        self.net = net.eval().requires_grad_(False)
        self.config: UNetConfig = net.config
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = compile
        self.device = next(net.parameters()).device
        self._plain = self._plain_impl
        self._guided = self._guided_impl
        if compile:
            self._plain = torch.compile(self._plain_impl, dynamic=True)
            self._guided = torch.compile(self._guided_impl, dynamic=True)

    def train(self, mode: bool = True) -> FlowNet:
        """A FlowNet is inference-only: the mode switch is accepted and ignored (it stays eval)."""
        return self

    # -- input plumbing ------------------------------------------------------------------------

    def _rows(
        self, x: torch.Tensor, t: torch.Tensor | float | None, c: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        cond = self.config.conditioning
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, S, S), got shape {tuple(x.shape)}")
        b = x.shape[0]
        if cond == "none":
            raise ValueError("FlowNet is for time- and class-conditioned velocity models")
        if t is None:
            raise ValueError("t is required")
        t = torch.as_tensor(t, dtype=torch.float32, device=self.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        if t.shape[0] != b:
            raise ValueError(f"t has {t.shape[0]} rows, x has {b}")
        if cond == "class":
            k = self.config.num_classes
            if c is None:
                c = torch.zeros((b, k), device=self.device)
            if c.shape != (b, k):
                raise ValueError(f"c must be ({b}, {k}), got {tuple(c.shape)}")
            c = c.to(device=self.device, dtype=torch.float32)
        elif c is not None:
            raise ValueError("c given, but the model is not class-conditioned")
        x = x.to(device=self.device, dtype=torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, t, c

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)

    # -- the compiled (or plain) bodies ----------------------------------------------------------

    def _plain_impl(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        with self._autocast():
            return self.net(x, t, c).float()

    def _guided_impl(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            f = self.net.encode(x)
            both = type(f)(*(torch.cat([a, a]) for a in f))
            v = self.net.decode(both, torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)])).float()
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + scale.reshape(-1, 1, 1, 1) * (v_cond - v_uncond)

    # -- public calls ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, c: torch.Tensor | None = None) -> torch.Tensor:
        x, t, c = self._rows(x, t, c)
        with torch.inference_mode():
            v = self._plain(x, t, c)
        return v.clone().contiguous()

    def guided(
        self, x: torch.Tensor, t: torch.Tensor | float, c: torch.Tensor, scale: torch.Tensor | float
    ) -> torch.Tensor:
        """Guided velocity ``v_u + w (v_c - v_u)`` for B rows in one call (class model only).

        x: (B, C, S, S); t: (B,) (or scalar); c: (B, K) one-hot rows for the conditional estimate
        (the unconditional one uses zeros); scale: w, a float or (B,) per row (w = 1: conditional,
        w = 0: unconditional). The encoder runs on B rows, the decoder on 2B. Returns (B, C, S, S) float32.
        """
        if self.config.conditioning != "class":
            raise ValueError("guidance needs a class-conditioned model")
        if c is None:
            raise ValueError("guided() needs the class rows c")
        x, t, rows = self._rows(x, t, c)
        assert rows is not None
        c = rows
        w = torch.as_tensor(scale, dtype=torch.float32, device=self.device).reshape(-1)
        if w.numel() == 1:
            w = w.expand(x.shape[0])
        if w.shape[0] != x.shape[0]:
            raise ValueError(f"scale has {w.shape[0]} rows, x has {x.shape[0]}")
        with torch.inference_mode():
            v = self._guided(x, t, c, w)
        return v.clone().contiguous()

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 10)) -> float:
        """Run every entry point once per batch size on zeros (oneDNN primitive creation, and the
        compilation when ``compiled``), so the first request does not pay for it. Returns seconds.

        Call it once when the worker starts, before it takes jobs.
        """
        t0 = time.perf_counter()
        s = self.config.image_size
        for b in batch_sizes:
            x = torch.zeros((b, self.config.in_channels, s, s), device=self.device)
            t = torch.full((b,), 0.5, device=self.device)
            if self.config.conditioning == "class":
                c = torch.zeros((b, self.config.num_classes), device=self.device)
                c[:, 0] = 1
                self.guided(x, t, c, 2.0)
                self(x, t, c)
            else:
                self(x, t)
        return time.perf_counter() - t0

    def guided_velocity(self, c: torch.Tensor, scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A solver velocity ``v(x_t, t)`` guiding the fixed class rows ``c`` (B, K) with ``scale``.

        Returns x_t's dtype, like :class:`models.flow.sampling.ClassifierFreeGuidance`.
        """
        return lambda x_t, t: self.guided(x_t, t, c, scale).to(x_t.dtype)


def prepare_for_inference(
    model: FlowUNet,
    *,
    dtype: Precision | torch.dtype = "auto",
    channels_last: bool = True,
    compile: bool = False,
    fold_bn: bool = True,
    capabilities: CapabilitiesFn | None = None,
) -> FlowNet:
    """Wrap a trained time- or class-conditioned :class:`FlowUNet` as a fast :class:`FlowNet`.

    Args:
        model: the trained network (any float dtype; not modified -- the FlowNet holds a float32
            copy on the same device).
        dtype: ``"auto"`` (bf16 autocast where :func:`bf16_supported`, else float32), ``"bfloat16"``
            or ``"float32"`` (or the torch dtypes).
        channels_last: run activations in channels-last layout.
        compile: wrap the forward functions in ``torch.compile(dynamic=True)``; the first call of each
            (plain, guided) pays the compilation.
        fold_bn: fold BatchNorm into the preceding convolutions (:func:`fold_batchnorm`).
        capabilities: CPU feature probe for ``"auto"`` (tests inject one).
    Returns:
        a :class:`FlowNet` in eval mode on the model's device.
    """
    if model.config.conditioning == "none":
        raise ValueError("prepare_for_inference is for time- and class-conditioned velocity models")
    device = next(model.parameters()).device
    compute = resolve_dtype(dtype, device, capabilities=capabilities)
    net = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).float().eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to takes it
    logger.info(
        "flow net %s D=%d: %s, channels_last=%s, compile=%s, fold_bn=%s",
        model.config.conditioning,
        model.config.num_hiddens,
        str(compute).removeprefix("torch."),
        channels_last,
        compile,
        fold_bn,
    )
    return FlowNet(net, dtype=compute, channels_last=channels_last, compile=compile)
