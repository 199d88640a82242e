"""Resident models: loaded once when the worker process starts, shared by every job.

The entry point builds a `ModelRegistry` from the settings and hands it to the work loop, whose jobs reach it
through their ``JobContext``. A model that fails to load is recorded with the reason; its operations are not
advertised, and the reason is published for each of them, so that /readyz and the API's 503 answers can say why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.operations import IF_UPSCALE, OPERATIONS
from core.settings import Settings

if TYPE_CHECKING:
    from models.diffusion.fast import FastOptions

log = logging.getLogger(__name__)

MNIST_OPERATIONS = tuple(name for name in OPERATIONS if name.startswith("mnist_"))
IF_OPERATIONS = tuple(name for name in OPERATIONS if name.startswith("if_"))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={name} but CUDA is not available on this machine")
    return device


def if_wanted(settings: Settings, device: torch.device) -> tuple[bool, str | None]:
    """Whether to load DeepFloyd IF, and if not, why (IF_ENABLED=auto loads it on a CUDA device only)."""
    if settings.if_enabled == "true":
        return True, None
    if settings.if_enabled == "false":
        return False, "DeepFloyd IF is disabled on this worker (IF_ENABLED=false)"
    if device.type == "cuda":
        return True, None
    return False, (
        f"DeepFloyd IF is off: IF_ENABLED=auto loads it only on a CUDA device and this worker runs on "
        f"{device.type}. To try every endpoint here, start the service with TINY_IF=1 (`TINY_IF=1 make run`: tiny "
        "random-weight pipelines, the images are noise); IF_ENABLED=true loads the real weights on this device "
        "(they must be in the local Hugging Face cache offline, and a CPU takes minutes per image)"
    )


@dataclass
class LoadedModel:
    """One resident network and where it came from."""

    model: Any
    source: str
    load_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelRegistry:
    """The resident models of one worker, the load errors, and what is deliberately not loaded."""

    device: torch.device
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    disabled: dict[str, str] = field(default_factory=dict)  # operation -> why it is not configured

    def get(self, name: str) -> Any:
        if name not in self.models:
            reason = self.errors.get(name, "not configured on this worker")
            raise ModelNotLoaded(f"model {name!r} is not loaded: {reason}", name)
        return self.models[name].model

    def source(self, name: str) -> str:
        return self.models[name].source

    def operations(self) -> list[str]:
        return [op for op in [*OPERATIONS, IF_UPSCALE] if op not in self.unavailable()]

    def unavailable(self) -> dict[str, str]:
        """Every operation this worker cannot serve, with the reason."""
        out: dict[str, str] = {}
        missing = [
            f"{name}: {self.errors.get(name, 'not loaded')}"
            for name in ("mnist_time", "mnist_class")
            if name not in self.models
        ]
        if missing:
            out.update(dict.fromkeys(MNIST_OPERATIONS, "; ".join(missing)))
        for op, reason in self.disabled.items():
            out.setdefault(op, reason)
        for name, ops in (("if_stage1", (*IF_OPERATIONS, IF_UPSCALE)), ("if_stage2", (IF_UPSCALE,))):
            if name in self.errors:
                for op in ops:
                    out.setdefault(op, f"{name}: {self.errors[name]}")
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able summary published for /readyz."""
        return {
            "device": str(self.device),
            "models": {
                name: {"source": m.source, "load_seconds": round(m.load_seconds, 3), **m.info}
                for name, m in self.models.items()
            },
            "errors": self.errors,
            "operations": self.operations(),
            "unavailable": self.unavailable(),
        }


def model_digest(source: str) -> str | None:
    """A digest of the weights a model was loaded from, computed once at load (the result cache's key names it):
    the SHA-256 of a checkpoint file; for a folder (a diffusers pipeline), the SHA-256 of every file's relative
    name, size and modification time; for a hub id, ``<id>@<revision>`` of the snapshot in the local cache. None
    when it cannot be told (then the API caches none of that model's jobs)."""
    path = Path(source)
    try:
        if path.is_file():
            h = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return f"sha256:{h.hexdigest()}"
        if path.is_dir():
            h = hashlib.sha256()
            for root, _, names in sorted(os.walk(path)):
                for name in sorted(names):
                    st = (Path(root) / name).stat()
                    h.update(f"{Path(root, name).relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            return f"files:{h.hexdigest()}"
    except OSError as exc:
        log.warning("could not compute the digest of %s: %s", source, exc)
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(source, "model_index.json")
    except Exception:  # noqa: BLE001 - no hub library, or not a hub id: no digest, no cache
        return None
    if isinstance(index, str):
        return f"hub:{source}@{Path(index).parent.name}"
    return None


def compute_digest(weights: str | None, dtype: str, device: torch.device) -> str | None:
    """The weights' digest with what else changes the bytes a model computes: its precision and the device type
    (the same weights in bfloat16 on a CPU and in float16 on a GPU give other PNGs)."""
    return None if weights is None else f"{weights};{dtype.removeprefix('torch.')};{device.type}"


class ModelNotLoaded(RuntimeError):
    """A job asked for a model this worker does not hold (``model``: its name; the message, for the log, may hold
    the load error with a path)."""

    def __init__(self, message: str, model: str = "") -> None:
        super().__init__(message)
        self.model = model


def load_mnist(registry: ModelRegistry, name: str, path: Path, settings: Settings) -> None:
    """A flow checkpoint, resident as the inference fast path (folded BN, channels-last, the precision of
    MNIST_PRECISION, compiled with MNIST_COMPILE), warmed up so that the first request does not pay for it."""
    from models.flow.checkpoint import load_model

    t0 = time.perf_counter()
    model, config = load_model(path, device=registry.device)
    net = mnist_network(model, settings)
    warm = net.warm_up()
    info = {
        "config": _jsonable(config),
        "precision": str(net.dtype).removeprefix("torch."),
        "compiled": net.compiled,
        "warm_up_s": round(warm, 3),
    }
    info["digest"] = compute_digest(model_digest(str(path)), info["precision"], registry.device)
    registry.models[name] = LoadedModel(net, str(path), time.perf_counter() - t0, info)
    log.info(
        "loaded %s from %s in %.2fs (%s, warm-up %.2fs)",
        name,
        path,
        registry.models[name].load_seconds,
        info["precision"],
        warm,
    )


def mnist_network(model: Any, settings: Settings) -> Any:
    """The network the worker serves for a trained flow model (``models.flow.inference``)."""
    from models.flow.inference import prepare_for_inference

    return prepare_for_inference(model, dtype=settings.mnist_precision, compile=settings.mnist_compile)


def _jsonable(config: Any) -> Any:
    return asdict(config) if is_dataclass(config) and not isinstance(config, type) else str(config)


def torch_threads(settings: Settings, device: torch.device) -> int | None:
    """The intra-op threads a worker sets (None: torch's default). TORCH_THREADS wins, then OMP_NUM_THREADS (torch
    reads it itself); a CPU worker otherwise leaves one core to the rest of the host: measured on the 2-core VM
    under 16 clients, a 2-thread worker's OpenMP threads spun against the API and the clients and its forwards took
    247 ms instead of 20 ms with 1 thread (BENCHMARKS.md, "Per-job overhead")."""
    if settings.torch_threads is not None:
        return settings.torch_threads
    if os.environ.get("OMP_NUM_THREADS") or device.type != "cpu":
        return None
    return max(1, (os.cpu_count() or 1) - 1)


def build_registry(settings: Settings) -> ModelRegistry:
    """Load every configured model once. Failures are recorded, logged in one line, and not fatal:
    the worker still serves what did load, and /readyz shows the reason for the rest."""
    device = resolve_device(settings.device)
    threads = torch_threads(settings, device)
    if threads is not None:
        torch.set_num_threads(threads)
    registry = ModelRegistry(device=device)
    for name, path in (
        ("mnist_time", settings.mnist_time_checkpoint),
        ("mnist_class", settings.mnist_class_checkpoint),
    ):
        try:
            load_mnist(registry, name, Path(path), settings)
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not crash-loop the worker
            registry.errors[name] = f"{type(exc).__name__}: {exc}"
            log.error("could not load %s from %s: %s", name, path, exc)
    wanted, why_not = if_wanted(settings, registry.device)
    if wanted:
        load_if(registry, settings)
    else:
        assert why_not is not None
        log.info("%s", why_not)
        registry.disabled.update(dict.fromkeys((*IF_OPERATIONS, IF_UPSCALE), why_not))
    return registry


def load_if(registry: ModelRegistry, settings: Settings) -> None:
    """DeepFloyd IF stage I (and optionally stage II), resident for the life of the process, then the fast path
    of their UNets (``IF_COMPILE`` and friends) warmed up before the worker reports ready."""
    from models.diffusion import engine as if_engine

    try:
        t0 = time.perf_counter()
        stage1 = if_engine.load_stage1(
            settings.if_stage1_model,
            device=registry.device,
            variant=settings.if_variant,
            text_encoder_device=settings.if_text_encoder_device,
            text_encoder_8bit=settings.if_text_encoder_8bit,
            embedding_cache_dir=str(settings.if_embedding_cache_dir) if settings.if_embedding_cache_dir else None,
        )
        registry.models["if_stage1"] = LoadedModel(
            stage1,
            settings.if_stage1_model,
            time.perf_counter() - t0,
            {
                "image_size": stage1.image_size,
                "dtype": str(stage1.dtype).removeprefix("torch."),
                "digest": compute_digest(model_digest(settings.if_stage1_model), str(stage1.dtype), registry.device),
            },
        )
    except Exception as exc:  # noqa: BLE001 - recorded and published; the worker serves the rest
        registry.errors["if_stage1"] = f"{type(exc).__name__}: {exc}"
        log.error("could not load DeepFloyd IF stage I (%s): %s", settings.if_stage1_model, exc)
        return
    if not settings.if_stage2_model:
        registry.disabled[IF_UPSCALE] = "no stage-II model is configured (IF_STAGE2_MODEL is empty)"
    else:
        try:
            t0 = time.perf_counter()
            stage2 = if_engine.load_stage2(
                settings.if_stage2_model, device=registry.device, variant=settings.if_variant, stage1=stage1
            )
            registry.models["if_stage2"] = LoadedModel(
                stage2,
                settings.if_stage2_model,
                time.perf_counter() - t0,
                {
                    "image_size": stage2.image_size,
                    "digest": compute_digest(
                        model_digest(settings.if_stage2_model), str(getattr(stage2, "dtype", "")), registry.device
                    ),
                },
            )
        except Exception as exc:  # noqa: BLE001 - recorded and published; the worker serves the rest
            registry.errors["if_stage2"] = f"{type(exc).__name__}: {exc}"
            log.error("could not load DeepFloyd IF stage II (%s): %s", settings.if_stage2_model, exc)
    accelerate_if(registry, settings)


def fast_options(settings: Settings) -> FastOptions:
    """The IF UNets' fast path as the settings ask for it."""
    from models.diffusion.fast import FastOptions

    return FastOptions(
        compile=settings.if_compile,
        channels_last=settings.if_channels_last,
        attention=settings.if_attention,
        buckets=settings.if_batch_buckets,
    )


def accelerate_if(registry: ModelRegistry, settings: Settings) -> None:
    """Wrap and warm up the loaded IF UNets (stage I, then stage II) and publish the outcome as each model's
    ``fast_path`` info. A mode this device cannot run is refused in one log line and IF is served eagerly; a
    warm-up past IF_WARMUP_TIMEOUT_S or a failed one falls back to eager (``accelerate`` logs that line)."""
    from models.diffusion.fast import FastPathRefused, accelerate

    loaded = [registry.models[name] for name in ("if_stage1", "if_stage2") if name in registry.models]
    options = fast_options(settings)
    if not loaded:
        return
    try:
        report = accelerate([m.model for m in loaded], options, warmup_timeout_s=settings.if_warmup_timeout_s)
        info = report.describe()
    except FastPathRefused as exc:
        log.error(
            "IF fast path refused (IF_COMPILE=%s, IF_ATTENTION=%s): %s; serving DeepFloyd IF eagerly",
            settings.if_compile,
            settings.if_attention,
            exc,
        )
        info = {
            **options.describe(),
            "active": False,
            "warmup_s": 0.0,
            "warmup_per_unet_s": [],
            "reason": f"refused: {exc}",
        }
    for m in loaded:
        m.info["fast_path"] = info
