"""Resident models: loaded once when the worker process starts, shared by every job.

The entry point builds a `ModelRegistry` from the settings and installs it with `install()`;
job functions get it with `get_registry()`. A model that fails to load is recorded with the
reason (and its operations are not advertised), so the API can answer 503 with that reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MNIST_OPERATIONS = ("mnist_sample",)
IF_OPERATIONS = ("if_sample", "if_sdedit", "if_inpaint", "if_anagram", "if_hybrid", "if_denoise")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={name} but CUDA is not available on this machine")
    return device


@dataclass
class LoadedModel:
    """One resident network and where it came from."""

    model: Any
    source: str
    load_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelRegistry:
    device: torch.device
    models: dict[str, LoadedModel] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        if name not in self.models:
            reason = self.errors.get(name, "not configured on this worker")
            raise ModelNotLoaded(f"model {name!r} is not loaded: {reason}")
        return self.models[name].model

    def operations(self) -> list[str]:
        ops: list[str] = []
        if {"mnist_time", "mnist_class"} <= self.models.keys():
            ops += MNIST_OPERATIONS
        if "if_stage1" in self.models:
            ops += IF_OPERATIONS
            if "if_stage2" in self.models:
                ops.append("if_upscale")
        return ops

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
        }


class ModelNotLoaded(RuntimeError):
    """A job asked for a model this worker does not hold."""


def load_mnist(registry: ModelRegistry, name: str, path: Path) -> None:
    from models.flow.checkpoint import load_model

    t0 = time.perf_counter()
    model, config = load_model(path, device=registry.device)
    registry.models[name] = LoadedModel(model, str(path), time.perf_counter() - t0, {"config": _jsonable(config)})
    log.info("loaded %s from %s in %.2fs", name, path, registry.models[name].load_seconds)


def _jsonable(config: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    return asdict(config) if is_dataclass(config) else str(config)


_REGISTRY: ModelRegistry | None = None
_RESULTS_DIR: Path | None = None


def install(registry: ModelRegistry, *, results_dir: Path) -> None:
    """Called once by the worker entry point, before it takes jobs."""
    global _REGISTRY, _RESULTS_DIR
    _REGISTRY, _RESULTS_DIR = registry, Path(results_dir)


def get_results_dir() -> Path:
    if _RESULTS_DIR is None:
        raise ModelNotLoaded("no results directory: jobs must run inside the worker started by `python -m workers`")
    return _RESULTS_DIR


def get_registry() -> ModelRegistry:
    if _REGISTRY is None:
        raise ModelNotLoaded("no model registry: jobs must run inside the worker started by `python -m workers`")
    return _REGISTRY


def build_registry(settings: Any) -> ModelRegistry:
    """Load every configured model once. Failures are recorded, logged in one line, and not fatal:
    the worker still serves what did load, and /readyz shows the reason for the rest."""
    registry = ModelRegistry(device=resolve_device(settings.device))
    for name, path in (("mnist_time", settings.mnist_time_checkpoint), ("mnist_class", settings.mnist_class_checkpoint)):
        try:
            load_mnist(registry, name, Path(path))
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not crash-loop the worker
            registry.errors[name] = f"{type(exc).__name__}: {exc}"
            log.error("could not load %s from %s: %s", name, path, exc)
    if settings.if_enabled:
        load_if(registry, settings)
    return registry


def load_if(registry: ModelRegistry, settings: Any) -> None:
    """DeepFloyd IF stage I (and optionally stage II), resident for the life of the process."""
    try:
        from models.diffusion import engine as if_engine

        t0 = time.perf_counter()
        stage1 = if_engine.load_stage1(
            settings.if_stage1_model,
            device=registry.device,
            variant=settings.if_variant,
            text_encoder_device=settings.if_text_encoder_device,
            embedding_cache_dir=str(settings.if_embedding_cache_dir) if settings.if_embedding_cache_dir else None,
        )
        registry.models["if_stage1"] = LoadedModel(
            stage1, settings.if_stage1_model, time.perf_counter() - t0,
            {"image_size": stage1.image_size, "dtype": str(stage1.dtype).removeprefix("torch.")},
        )
    except Exception as exc:  # noqa: BLE001
        registry.errors["if_stage1"] = f"{type(exc).__name__}: {exc}"
        log.error("could not load DeepFloyd IF stage I (%s): %s", settings.if_stage1_model, exc)
        return
    if settings.if_stage2_model:
        try:
            t0 = time.perf_counter()
            stage2 = if_engine.load_stage2(
                settings.if_stage2_model, device=registry.device, variant=settings.if_variant, stage1=stage1
            )
            registry.models["if_stage2"] = LoadedModel(
                stage2, settings.if_stage2_model, time.perf_counter() - t0, {"image_size": stage2.image_size}
            )
        except Exception as exc:  # noqa: BLE001
            registry.errors["if_stage2"] = f"{type(exc).__name__}: {exc}"
            log.error("could not load DeepFloyd IF stage II (%s): %s", settings.if_stage2_model, exc)
