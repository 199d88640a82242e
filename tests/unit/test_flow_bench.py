"""bench/bench_flow.py times the old and the new default request side by side, and training, in one run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.flow.training import build_seeded_model
from models.flow.unet import UNetConfig
from tests.support import load_script


def test_bench_flow_old_and_new_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script("bench/bench_flow.py")
    n = torch.get_num_threads()
    try:
        result = bench.main(
            [
                "--threads",
                "1",
                "--n",
                "2",
                "3",
                "--repeats",
                "1",
                "--old-width",
                "4",
                "--new-width",
                "4",
                "--checkpoint",
                str(tmp_path / "missing.safetensors"),
                "--steps",
                "2",
                "--train-widths",
                "4",
                "--train-batch",
                "8",
                "--train-steps",
                "1",
                "--train-warmup",
                "1",
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
    finally:
        torch.set_num_threads(n)
    req = [r for r in result["rows"] if r["what"] == "request"]
    assert [(r["config"], r["n"]) for r in req] == [
        ("old default", 2),
        ("old default", 3),
        ("new default", 2),
        ("new default", 3),
    ]
    old, new = req[0], req[2]
    assert (old["method"], old["steps"], old["nfe"], old["guidance"]) == ("euler", 50, 50, 5.0)
    assert old["path"] == "plain float32 FlowUNet" and new["path"].startswith("prepare_for_inference")
    assert new["steps"] == 2 and new["nfe"] == bench.nfe(new["method"], 2)
    assert all(r["median_s"] > 0 and r["first_s"] > 0 for r in req)
    train = [r for r in result["rows"] if r["what"] == "train"]
    assert len(train) == 1 and train[0]["images_per_s"] > 0 and train[0]["D"] == 4
    out = capsys.readouterr().out
    assert "| old default | 1 | euler | 50 | 50 | 5 |" in out and "threads 1, n=3: old" in out
    assert json.loads((tmp_path / "b.json").read_text())["old_default"]["steps"] == 50


def test_serve_once_is_a_png_of_the_grid() -> None:
    bench = load_script("bench/bench_flow.py")
    model = build_seeded_model(UNetConfig("class", 4), 0).eval()
    png = bench.serve_once(model, bench.RequestConfig("t", "euler", 2, 2.0, fast=False), 12, 7, torch.device("cpu"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(png)).size == (280, 56)  # 10 columns x 2 rows of 28 px
