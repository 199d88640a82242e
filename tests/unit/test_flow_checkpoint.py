"""save_model / load_model round trips and clear errors; the shipped checkpoints load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.flow.checkpoint import CheckpointError, convert, load_model, read_config, save_model
from models.flow.training import build_seeded_model
from models.flow.unet import UNetConfig

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "checkpoints"


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, UNetConfig]:
    cfg = UNetConfig("class", 4)
    model = build_seeded_model(cfg, seed=0)
    # make BatchNorm statistics non-trivial
    with torch.no_grad():
        model.train()(torch.rand(8, 1, 28, 28), torch.rand(8), torch.eye(10)[:8])
    model.eval()
    path = tmp_path / "m.safetensors"
    save_model(model, cfg, path, metadata={"epochs": 3})
    return path, model, cfg


def _out(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 1, 28, 28, generator=g), torch.tensor([0.1, 0.9]), torch.eye(10)[:2])


def test_roundtrip(saved) -> None:
    path, model, cfg = saved
    loaded, cfg2 = load_model(path)
    assert cfg2 == cfg and not loaded.training
    assert torch.equal(_out(loaded), _out(model))
    assert read_config(path)[1] == {"epochs": 3}
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["config"]["conditioning"] == "class" and doc["dtype"] == "float32"


def test_fp16_export(saved, tmp_path: Path) -> None:
    path, model, _ = saved
    dst = tmp_path / "half.safetensors"
    convert(path, dst)
    from safetensors import safe_open

    with safe_open(str(dst), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert dtypes == {"F16", "I64"}  # BatchNorm counters stay integer
    loaded, _ = load_model(dst)
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(_out(loaded), _out(model), rtol=1e-2, atol=1e-2)
    half, _ = load_model(dst, dtype=torch.float16)
    assert next(half.parameters()).dtype == torch.float16


def test_missing_and_corrupt(saved, tmp_path: Path) -> None:
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    path.with_suffix(".json").rename(bad.with_suffix(".json"))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(bad)
    with pytest.raises(CheckpointError, match=r"config .* not found"):
        load_model(path)
    assert issubclass(CheckpointError, ValueError)


def test_mismatching_config(saved) -> None:
    path, _, _ = saved
    cpath = path.with_suffix(".json")
    doc = json.loads(cpath.read_text())
    doc["config"]["num_hiddens"] = 8
    cpath.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(path)
    doc["config"]["conditioning"] = "time"
    doc["config"]["num_hiddens"] = 4
    cpath.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(path)
    cpath.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read checkpoint config"):
        load_model(path)
    cpath.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="is not a"):
        load_model(path)


@pytest.mark.parametrize(("stem", "conditioning"), [("mnist_time_fm", "time"), ("mnist_class_fm", "class")])
def test_shipped_checkpoints_load(stem: str, conditioning: str) -> None:
    path = SHIPPED / f"{stem}.safetensors"
    assert path.is_file(), f"{path} is missing: the service cannot serve /mnist/sample without it"
    _, cfg = load_model(path)
    assert cfg.conditioning == conditioning and cfg.image_size == 28
    assert path.stat().st_size < 10_000_000
