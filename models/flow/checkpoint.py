"""Save and load a :class:`FlowUNet` as ``<stem>.safetensors`` + ``<stem>.json``.

The JSON file alone rebuilds the network::

    {"format": "flow-unet", "version": 1, "config": {...UNetConfig...}, "dtype": "float16",
     "metadata": {...free-form: training command, epochs, losses...}}

Usage as a CLI (convert a training checkpoint to the shipped fp16 one)::

    python -m models.flow.checkpoint SRC.safetensors DST.safetensors --dtype float16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .unet import FlowUNet, UNetConfig

logger = logging.getLogger(__name__)

FORMAT = "flow-unet"
VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A missing, unreadable or mismatching checkpoint."""


def config_path(path: str | os.PathLike) -> Path:
    """The JSON file that sits beside ``path`` with the same stem."""
    return Path(path).with_suffix(".json")


def save_model(
    model: FlowUNet,
    config: UNetConfig,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``path`` (.safetensors) and the JSON config beside it.

    Floating-point tensors are cast to ``dtype`` when given (e.g. ``torch.float16`` to ship);
    integer buffers (BatchNorm counters) are kept.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    float_dtypes = {str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()}
    save_file(state, str(path), metadata={"format": FORMAT, "version": str(VERSION)})
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "dtype": ",".join(sorted(float_dtypes)),
        "metadata": metadata or {},
    }
    config_path(path).write_text(json.dumps(doc, indent=2) + "\n")


def read_config(path: str | os.PathLike) -> tuple[UNetConfig, dict[str, Any]]:
    """Read the JSON beside ``path``: returns (config, metadata). Raises :class:`CheckpointError`."""
    cpath = config_path(path)
    try:
        doc = json.loads(cpath.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint config {cpath} not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read checkpoint config {cpath}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("config"), dict):
        raise CheckpointError(f"{cpath} is not a {FORMAT!r} config (need 'format' and 'config')")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{cpath}: unsupported version {doc.get('version')!r} (expected {VERSION})")
    try:
        config = UNetConfig.from_dict(doc["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{cpath}: invalid config: {e}") from e
    return config, dict(doc.get("metadata") or {})


def load_model(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[FlowUNet, UNetConfig]:
    """Load ``path`` (.safetensors; the JSON config sits beside it with the same stem).

    Returns ``(model, config)`` with the model in eval mode on ``device`` in ``dtype``.
    Raises :class:`CheckpointError` for a missing, unreadable or mismatching file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    config, _ = read_config(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    model = FlowUNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config {config}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, config expects {tuple(expected[k].shape)}")
        state[k] = v.to(expected[k].dtype)
    model.load_state_dict(state)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, config


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: torch.dtype = torch.float16) -> None:
    """Re-save checkpoint ``src`` as ``dst`` with floating tensors in ``dtype``, keeping the metadata."""
    model, config = load_model(src)
    _, metadata = read_config(src)
    save_model(model, config, dst, dtype=dtype, metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Convert a flow-UNet checkpoint (e.g. to fp16 for shipping).")
    p.add_argument("src", help="source .safetensors (its .json beside it)")
    p.add_argument("dst", help="destination .safetensors")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="float16")
    args = p.parse_args(argv)
    convert(args.src, args.dst, _DTYPES[args.dtype])


if __name__ == "__main__":
    main()
