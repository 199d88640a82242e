"""The fast path for the IF UNets: ``torch.compile``, CUDA graphs over batch-row buckets, channels-last and the
attention backend, behind the UNet's own call signature.

Notation: N rows in one UNet call (the branches of one or several requests), B the bucket that serves them (the
smallest configured size >= N), C input channels, S the sample size, L = 77 prompt tokens, D the embedding width.

``FastUNet(unet, options)`` is a drop-in for a diffusers ``UNet2DConditionModel`` at inference: the same call
``unet(x, timestep, encoder_hidden_states=embeds, class_labels=None, return_dict=False)[0]`` with x (N, C, S, S),
timestep (N,) integers (one per row, or a scalar for all), embeds (N, L, D), class_labels (N,) for stage II, and
the same ``dtype``, ``device``, ``config`` and ``parameters()``. Outputs are (N, 2C', S, S), fresh contiguous
tensors. A compiled call pads its N rows to B by repeating the last row, runs bucket B and returns the first N
rows; N beyond the largest bucket is split into chunks of the largest bucket (the last chunk padded).

Padding rows cannot change the real rows: the IF UNet never mixes rows (group norms, attention and convolutions
act per sample), and within one bucket the same kernels run whatever the other rows hold, so a real row's output
is bit-identical under any padding. Across buckets, outputs may differ in the last bits (another batch size can
select other GEMM or convolution kernels).

Modes (``FastOptions.compile``):

- ``off``: eager; ``channels_last`` and ``attention`` still apply; no padding.
- ``default``: ``torch.compile`` (inductor, default mode) with a dynamic batch dimension, so one compilation
  serves every bucket (a backend may specialize and compile once more, e.g. for batches of 16 and more).
- ``reduce-overhead``: the default-mode kernels, captured by this module as one CUDA graph per bucket into one
  memory pool shared by every bucket and both stages. This is what ``torch.compile(mode="reduce-overhead")``
  does, with the buckets, the static buffers and the pool explicit, and graph breaks harmless. CUDA only.
- ``max-autotune``: inductor's ``max-autotune-no-cudagraphs`` kernels (GEMM and convolution templates chosen by
  benchmarking) plus the same CUDA graphs. CUDA only; compiling takes much longer.

``attention`` selects the kernel of ``scaled_dot_product_attention`` (``auto``: PyTorch chooses; ``flash``,
``efficient``, ``cudnn``, ``math``); ``efficient`` and ``cudnn`` exist on CUDA only. ``channels_last`` converts
the UNet's weights in place and the inputs per call.

Warm-up (``FastUNet.warm_up``, ``accelerate``): every bucket is compiled (a call on seeded random inputs), then,
in the graph modes, captured largest first after two uncaptured runs on a side stream, replayed once and compared
with the uncaptured output. ``accelerate(engines, options, warmup_timeout_s=...)`` does this for the UNets of
several engines under one bound; past the bound (checked between buckets: a compilation in progress cannot be
interrupted) or on any error, every engine gets its eager UNet back and one warning line says why.

Without CUDA, ``off`` and ``default`` work; the CUDA-only modes and attention kernels raise ``FastPathRefused``.
A FastUNet is for inference only (every call runs under ``torch.no_grad``) and must not be moved to another
device or dtype after its warm-up. Graph replays are serialized by a lock (the static buffers are shared).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, get_args

import torch
from torch import Tensor, nn

__all__ = [
    "ATTENTION_BACKENDS",
    "COMPILE_MODES",
    "CUDA_ONLY_ATTENTION",
    "CUDA_ONLY_MODES",
    "DEFAULT_BUCKETS",
    "AttentionBackend",
    "CompileMode",
    "FastOptions",
    "FastPathRefused",
    "FastReport",
    "FastUNet",
    "WarmupTimeout",
    "accelerate",
    "bucket_for",
    "plan_chunks",
]

logger = logging.getLogger(__name__)

CompileMode = Literal["off", "default", "max-autotune", "reduce-overhead"]
AttentionBackend = Literal["auto", "flash", "efficient", "cudnn", "math"]
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
CUDA_ONLY_MODES = ("max-autotune", "reduce-overhead")
CUDA_ONLY_ATTENTION = ("efficient", "cudnn")
DEFAULT_BUCKETS = (2, 4, 8, 16, 32)
TEXT_LENGTH = 77  # IF's T5 prompt length (models.diffusion.text)

_INDUCTOR_MODE = {"default": "default", "reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


class FastPathRefused(ValueError):
    """The options cannot run on this device (a CUDA-only mode or attention kernel without CUDA)."""


class WarmupTimeout(TimeoutError):
    """The warm-up went past its bound."""


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows (``n`` at most the largest bucket)."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} rows do not fit the largest bucket {max(buckets)}")


def plan_chunks(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, stop, bucket) for each chunk of rows 0..n: full chunks of the largest bucket, then the rest in the
    smallest bucket that holds it. ``plan_chunks(37, (2, 4, 8, 16, 32)) == [(0, 32, 32), (32, 37, 8)]``."""
    if n < 1:
        raise ValueError(f"a UNet call needs at least one row, got {n}")
    largest = max(buckets)
    return [(s, min(n, s + largest), bucket_for(min(n, s + largest) - s, buckets)) for s in range(0, n, largest)]


@dataclass(frozen=True)
class FastOptions:
    """How to run the IF UNets.

    Attributes:
        compile: ``off``, ``default``, ``reduce-overhead`` or ``max-autotune`` (see the module docstring).
        channels_last: NHWC weights and inputs.
        attention: the ``scaled_dot_product_attention`` kernel: ``auto``, ``flash``, ``efficient``, ``cudnn``,
            ``math``.
        buckets: batch-row sizes served by compiled calls and CUDA graphs, strictly increasing, each >= 1.
        backend: the ``torch.compile`` backend: ``inductor``, or another name or backend callable (tests use
            ``eager``, which traces without compiling; ``mode`` is passed to inductor only).
    """

    compile: CompileMode = "off"
    channels_last: bool = False
    attention: AttentionBackend = "auto"
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    backend: str | Callable[..., Any] = "inductor"

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile mode {self.compile!r} is none of {', '.join(COMPILE_MODES)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {self.attention!r} is none of {', '.join(ATTENTION_BACKENDS)}")
        buckets = tuple(int(b) for b in self.buckets)
        if not buckets or buckets[0] < 1 or any(a >= b for a, b in itertools.pairwise(buckets)):
            raise ValueError(f"buckets must be positive and strictly increasing, got {self.buckets}")
        object.__setattr__(self, "buckets", buckets)

    @property
    def compiled(self) -> bool:
        return self.compile != "off"

    @property
    def graphs(self) -> bool:
        """Whether each bucket is captured as a CUDA graph."""
        return self.compile in CUDA_ONLY_MODES

    @property
    def enabled(self) -> bool:
        """Whether anything differs from the plain eager UNet."""
        return self.compiled or self.channels_last or self.attention != "auto"

    def check(self, device: torch.device | str) -> None:
        """Raise ``FastPathRefused`` when these options cannot run on ``device``."""
        device = torch.device(device)
        if device.type == "cuda":
            return
        if self.compile in CUDA_ONLY_MODES:
            raise FastPathRefused(
                f"compile mode {self.compile!r} captures CUDA graphs and needs a CUDA device, but the UNet is on "
                f"{device.type}; use 'default' or 'off' there"
            )
        if self.attention in CUDA_ONLY_ATTENTION:
            raise FastPathRefused(
                f"attention backend {self.attention!r} exists on CUDA only, but the UNet is on {device.type}; "
                "use 'auto', 'flash' or 'math' there"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "compile": self.compile,
            "channels_last": self.channels_last,
            "attention": self.attention,
            "buckets": list(self.buckets),
        }


class Graph(Protocol):
    """One captured computation: ``capture(fn)`` runs ``fn`` once while recording and returns its (static) output;
    ``replay()`` recomputes that output in place from the current contents of the inputs ``fn`` read."""

    def capture(self, fn: Callable[[], Tensor]) -> Tensor: ...

    def replay(self) -> None: ...


class CudaGraph:
    """``torch.cuda.CUDAGraph`` in a memory pool shared with other graphs (they never run concurrently)."""

    def __init__(self, pool: Any = None) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, fn: Callable[[], Tensor]) -> Tensor:
        with torch.cuda.graph(self.graph, pool=self.pool):
            out = fn()
        return out

    def replay(self) -> None:
        self.graph.replay()


class EagerGraph:
    """Stand-in for a CUDA graph on any device: ``replay`` calls ``fn`` again and writes into the captured output.
    It exercises the static-buffer logic of the graph modes without CUDA (tests)."""

    def __init__(self, pool: Any = None) -> None:
        self.fn: Callable[[], Tensor] | None = None
        self.out: Tensor | None = None

    def capture(self, fn: Callable[[], Tensor]) -> Tensor:
        self.fn, self.out = fn, fn()
        return self.out

    def replay(self) -> None:
        assert self.fn is not None and self.out is not None
        self.out.copy_(self.fn())


@dataclass
class _Bucket:
    """Static inputs and output of one captured bucket: x (B, C, S, S), t (B,), e (B, L, D), c (B,) or None."""

    rows: int
    x: Tensor
    t: Tensor
    e: Tensor
    c: Tensor | None
    graph: Graph | None = None
    out: Tensor | None = None


def _set_recompile_limit(at_least: int) -> None:
    """Each stage's compilation may specialize once more on the batch size; keep dynamo from giving up on the
    UNet's forward (its limit counts the entries of both stages together). Process-wide."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(int(getattr(config, name)), at_least))


class FastUNet(nn.Module):
    """An IF UNet behind the fast path; see the module docstring for the call and the modes.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (converted to channels-last in place if asked).
        options: the mode, layout, attention kernel and buckets.
        text_length: L of the prompt embeddings the warm-up compiles for (77 for IF).
        pool: a CUDA graph memory pool to share (``torch.cuda.graph_pool_handle()``); None: one of its own.
        graph_factory: ``pool -> Graph`` (default ``CudaGraph``; tests pass ``EagerGraph`` to run the graph modes'
            buffer logic on the CPU, which also lifts the CUDA-only refusal of the compile mode).

    Raises:
        FastPathRefused: the options cannot run on the UNet's device.
    """

    _compiled: Callable[..., Any] | None

    def __init__(
        self,
        unet: nn.Module,
        options: FastOptions,
        *,
        text_length: int = TEXT_LENGTH,
        pool: Any = None,
        graph_factory: Callable[[Any], Graph] | None = None,
    ) -> None:
        super().__init__()
        device = next(unet.parameters()).device
        if graph_factory is None:
            options.check(device)
            graph_factory = CudaGraph
        else:
            replace(options, compile="default" if options.compiled else "off").check(device)
        self.unet = unet
        self.options = options
        self.text_length = text_length
        self._graph_factory = graph_factory
        self._pool = pool
        self._lock = threading.Lock()
        self._buckets: dict[int, _Bucket] = {}
        self._warned_shape = False
        self.ready = not options.compiled
        self.warmup_seconds = 0.0
        if options.channels_last:
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it
        compiled: Callable[..., Any] | None = None
        if options.compiled:
            _set_recompile_limit(16)
            kwargs: dict[str, Any] = {"backend": options.backend, "dynamic": None}
            if options.backend == "inductor":
                kwargs["mode"] = _INDUCTOR_MODE[options.compile]
            compiled = torch.compile(unet, **kwargs)
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: parameters() lists the UNet's once

    # --- the attributes the IF adapters and engines read --------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def buckets(self) -> tuple[int, ...]:
        return self.options.buckets

    def _sample_shape(self) -> tuple[int, int, int]:
        size = self.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.config.in_channels), int(h), int(w)

    def _embed_dim(self) -> int:
        return int(self.config.encoder_hid_dim or self.config.cross_attention_dim)

    def _has_class_labels(self) -> bool:
        return self.config.class_embed_type is not None

    # --- calls ------------------------------------------------------------------------------------------------

    def _attention(self) -> contextlib.AbstractContextManager[Any]:
        if self.options.attention == "auto":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "math": SDPBackend.MATH,
        }[self.options.attention]
        return sdpa_kernel([backend])

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(
            memory_format=torch.channels_last if self.options.channels_last else torch.contiguous_format
        )

    def _eager(self, x: Tensor, t: Tensor, e: Tensor, c: Tensor | None, extra: dict[str, Any]) -> Tensor:
        with self._attention():
            out = self.unet(self._layout(x), t, encoder_hidden_states=e, class_labels=c, return_dict=False, **extra)[0]
        return out.contiguous()

    def _compiled_call(self, x: Tensor, t: Tensor, e: Tensor, c: Tensor | None) -> Tensor:
        """The compiled UNet on one bucket's rows (the batch dimension is marked dynamic)."""
        assert self._compiled is not None
        for a in (x, t, e, c):
            if a is not None:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        with self._attention():
            return self._compiled(x, t, encoder_hidden_states=e, class_labels=c, return_dict=False)[0]

    @torch.no_grad()
    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | int,
        encoder_hidden_states: Tensor,
        class_labels: Tensor | None = None,
        *,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """The UNet's call; ``kwargs`` that are not None (attention masks, cross-attention kwargs, ...) run it
        eagerly. Returns ``(out,)`` for ``return_dict=False``, else an object with ``.sample``."""
        n = sample.shape[0]
        x = sample.to(self.device, self.dtype)
        t = _per_row(timestep, n, self.device)
        e = encoder_hidden_states.to(self.device, self.dtype)
        c = None if class_labels is None else _per_row(class_labels, n, self.device)
        extra = {k: v for k, v in kwargs.items() if v is not None}
        if not self.options.compiled or extra or not self._fits(x, e, c):
            out = self._eager(x, t, e, c, extra)
        else:
            if not self.ready:
                logger.info("warming up the UNet fast path at its first call")
                self.warm_up()
            parts = [self._run(b, x[i:j], t[i:j], e[i:j], None if c is None else c[i:j]) for i, j, b in self._plan(n)]
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _plan(self, n: int) -> list[tuple[int, int, int]]:
        return plan_chunks(n, self.buckets)

    def _fits(self, x: Tensor, e: Tensor, c: Tensor | None) -> bool:
        """Whether a call has the shapes the warm-up compiled for (anything else runs eagerly, logged once)."""
        ok = (
            tuple(x.shape[1:]) == self._sample_shape()
            and tuple(e.shape[1:]) == (self.text_length, self._embed_dim())
            and (c is not None) == self._has_class_labels()
        )
        if not ok and not self._warned_shape:
            self._warned_shape = True
            logger.warning(
                "UNet call with x %s, embeds %s is not the warmed-up shape (C, S, S) = %s, (L, D) = %s: runs eagerly",
                tuple(x.shape),
                tuple(e.shape),
                self._sample_shape(),
                (self.text_length, self._embed_dim()),
            )
        return ok

    def _run(self, rows: int, x: Tensor, t: Tensor, e: Tensor, c: Tensor | None) -> Tensor:
        """``x.shape[0] <= rows`` real rows through bucket ``rows``; returns their outputs as a fresh tensor.

        The compiled function always sees inference tensors of its own (padded copies, or the static buffers), as in
        the warm-up, so a caller in ``no_grad`` or in ``inference_mode`` never triggers a recompilation; the result
        is cloned outside inference mode, an ordinary tensor."""
        m = x.shape[0]
        if not self.options.graphs:
            with torch.inference_mode():
                out = self._compiled_call(
                    self._layout(_pad(x, rows)), _pad(t, rows), _pad(e, rows), None if c is None else _pad(c, rows)
                )
            return out[:m].clone(memory_format=torch.contiguous_format)
        bucket = self._buckets[rows]
        assert bucket.graph is not None and bucket.out is not None
        with self._lock:
            with torch.inference_mode():
                _fill(bucket.x, x)
                _fill(bucket.t, t)
                _fill(bucket.e, e)
                if bucket.c is not None:
                    assert c is not None
                    _fill(bucket.c, c)
                bucket.graph.replay()
            return bucket.out[:m].clone(memory_format=torch.contiguous_format)

    # --- warm-up ----------------------------------------------------------------------------------------------

    def _static_inputs(self, rows: int, seed: int) -> _Bucket:
        """Seeded random inputs of one bucket on the UNet's device: x ~ N(0, 1), t distinct per row, e ~ N(0, 1)."""
        g = torch.Generator().manual_seed(seed)
        shape = self._sample_shape()
        x = self._layout(torch.randn(rows, *shape, generator=g).to(self.device, self.dtype))
        t = torch.linspace(999, 0, rows).round().long().to(self.device)
        e = torch.randn(rows, self.text_length, self._embed_dim(), generator=g).to(self.device, self.dtype)
        c = torch.full((rows,), 20, dtype=torch.long, device=self.device) if self._has_class_labels() else None
        return _Bucket(rows, x, t, e, c)

    @torch.inference_mode()
    def warm_up(self, deadline: float | None = None) -> float:
        """Compile every bucket and, in the graph modes, capture it; returns the seconds it took.

        Args:
            deadline: ``time.monotonic()`` value past which ``WarmupTimeout`` is raised (checked between buckets).
        """
        if not self.options.compiled:
            return 0.0
        t0 = time.monotonic()

        def check(what: str) -> None:
            if deadline is not None and time.monotonic() > deadline:
                raise WarmupTimeout(f"the warm-up bound passed while {what}")

        for rows in self.buckets:  # compile (and let kernels autotune) for every bucket
            check(f"compiling bucket {rows}")
            b = self._static_inputs(rows, seed=rows)
            self._compiled_call(b.x, b.t, b.e, b.c)
            _sync(self.device)
        check("compiling")
        if self.options.graphs:
            for rows in sorted(self.buckets, reverse=True):  # largest first: smaller graphs reuse its pool blocks
                check(f"capturing bucket {rows}")
                self._buckets[rows] = self._capture(rows)
        self.ready = True
        self.warmup_seconds = time.monotonic() - t0
        return self.warmup_seconds

    def _capture(self, rows: int) -> _Bucket:
        bucket = self._static_inputs(rows, seed=1000 + rows)

        def fn() -> Tensor:
            return self._compiled_call(bucket.x, bucket.t, bucket.e, bucket.c)

        with _side_stream(self.device):  # uncaptured runs first: lazy initialization, workspaces, autotuning
            fn()
            ref = fn().clone()
        graph = self._graph_factory(self._pool)
        bucket.out = graph.capture(fn)
        bucket.graph = graph
        graph.replay()
        _sync(self.device)
        err = (bucket.out.float() - ref.float()).abs().max().item()
        scale = max(1.0, ref.float().abs().max().item())
        if not torch.isfinite(bucket.out).all() or err > 1e-2 * scale:
            raise RuntimeError(f"bucket {rows}: the graph replay differs from the uncaptured run by {err:.3g}")
        return bucket

    def release(self) -> None:
        """Drop the compiled function and the captured graphs (after a failed warm-up)."""
        self._buckets.clear()
        object.__setattr__(self, "_compiled", None)
        self.ready = False


def _per_row(value: Tensor | int, n: int, device: torch.device) -> Tensor:
    """A scalar or (N,) tensor of integers as an (N,) int64 tensor on ``device``."""
    v = torch.as_tensor(value, device=device)
    if v.ndim == 0:
        v = v.expand(n)
    if tuple(v.shape) != (n,):
        raise ValueError(f"expected a scalar or ({n},) per-row values, got shape {tuple(v.shape)}")
    return v.to(torch.long).contiguous()


def _pad(a: Tensor, rows: int) -> Tensor:
    """A copy of ``a`` (m, ...) padded to ``rows`` rows by repeating its last row."""
    m = a.shape[0]
    if m == rows:
        return a.clone(memory_format=torch.contiguous_format)
    return torch.cat([a, a[-1:].expand(rows - m, *a.shape[1:])])


def _fill(static: Tensor, a: Tensor) -> None:
    """Copy ``a`` (m rows) into the first rows of ``static`` and its last row into the rest."""
    m = a.shape[0]
    static[:m].copy_(a)
    if m < static.shape[0]:
        static[m:].copy_(a[-1:].expand(static.shape[0] - m, *a.shape[1:]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """Run on a fresh CUDA stream (as before a capture), ordered after and before the current one."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)


@dataclass(frozen=True)
class FastReport:
    """What ``accelerate`` did.

    Attributes:
        options: what was asked for.
        active: whether the engines now run the fast path.
        seconds: the whole warm-up.
        per_unet_s: the warm-up of each engine's UNet, in order (those reached before a fallback).
        reason: why the fast path is not active (timeout or error), else None.
    """

    options: FastOptions
    active: bool
    seconds: float
    per_unet_s: tuple[float, ...] = field(default=())
    reason: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (the worker publishes it for /readyz)."""
        return {
            **self.options.describe(),
            "active": self.active,
            "warmup_s": round(self.seconds, 3),
            "warmup_per_unet_s": [round(s, 3) for s in self.per_unet_s],
            "reason": self.reason,
        }


def _eager_unet(unet: nn.Module, options: FastOptions) -> nn.Module:
    """The UNet without compilation: itself, or a FastUNet for channels-last or an attention backend."""
    eager = replace(options, compile="off")
    return FastUNet(unet, eager) if eager.enabled else unet


def accelerate(
    engines: Sequence[Any],
    options: FastOptions,
    *,
    warmup_timeout_s: float | None = None,
    graph_factory: Callable[[Any], Graph] | None = None,
) -> FastReport:
    """Put every engine's UNet (``engine.unet``) behind the fast path and warm all of them up under one bound.

    Args:
        engines: objects with a ``unet`` attribute (``IFEngine``, ``Stage2Engine``), warmed up in order.
        options: the fast path.
        warmup_timeout_s: bound on the whole warm-up (None: none). Past it, or on any error during the warm-up,
            every engine gets its eager UNet back (with channels-last and the attention backend, which need no
            warm-up), compiled code and graphs are dropped (``torch._dynamo.reset()``, which also forgets any other
            compiled function of the process), and one warning line says why.
        graph_factory: see ``FastUNet`` (tests).

    Raises:
        FastPathRefused: the options cannot run on an engine's device; no engine was changed.
    """
    unets = [e.unet.unet if isinstance(e.unet, FastUNet) else e.unet for e in engines]
    for u in unets:
        device = next(u.parameters()).device
        if graph_factory is None:
            options.check(device)
        else:
            replace(options, compile="default" if options.compiled else "off").check(device)
    if not options.compiled:
        for e, u in zip(engines, unets, strict=True):
            e.unet = _eager_unet(u, options)
        return FastReport(options, active=options.enabled, seconds=0.0)
    devices = {next(u.parameters()).device for u in unets}
    pool = torch.cuda.graph_pool_handle() if options.graphs and graph_factory is None else None  # CUDA (checked)
    t0 = time.monotonic()
    deadline = None if warmup_timeout_s is None else t0 + warmup_timeout_s
    fasts: list[FastUNet] = []
    per_unet: list[float] = []
    try:
        for u in unets:
            fast = FastUNet(u, options, pool=pool, graph_factory=graph_factory)
            fasts.append(fast)
            per_unet.append(fast.warm_up(deadline))
    except Exception as exc:  # noqa: BLE001 - any failure of the optional fast path means: serve eagerly
        seconds = time.monotonic() - t0
        for fast in fasts:
            fast.release()
        del fasts
        torch._dynamo.reset()
        if any(d.type == "cuda" for d in devices):
            torch.cuda.empty_cache()
        for e, u in zip(engines, unets, strict=True):
            e.unet = _eager_unet(u, options)
        if isinstance(exc, WarmupTimeout):
            reason = f"warm-up past its bound of {warmup_timeout_s:g}s ({exc})"
        else:
            reason = f"warm-up failed: {_describe(exc)}"
        logger.warning(
            "IF fast path (compile=%s) abandoned after %.1fs: %s; the UNets run eagerly",
            options.compile,
            seconds,
            reason,
        )
        return FastReport(options, active=False, seconds=seconds, per_unet_s=tuple(per_unet), reason=reason)
    for e, fast in zip(engines, fasts, strict=True):
        e.unet = fast
    seconds = time.monotonic() - t0
    logger.info(
        "IF fast path ready in %.1fs (%s): compile=%s, channels_last=%s, attention=%s, buckets=%s",
        seconds,
        ", ".join(f"{s:.1f}s" for s in per_unet),
        options.compile,
        options.channels_last,
        options.attention,
        ",".join(map(str, options.buckets)),
    )
    return FastReport(options, active=True, seconds=seconds, per_unet_s=tuple(per_unet))


def _describe(exc: BaseException) -> str:
    """``Type: first line`` of an exception, and of its root cause when it wraps one (dynamo wraps backend errors)."""

    def line(e: BaseException) -> str:
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__

    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    return line(exc) if root is exc else f"{line(exc)} (caused by {line(root)})"
