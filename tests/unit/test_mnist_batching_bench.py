"""bench/bench_mnist_batching.py: the guided call by images per call, and requests alone against batched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.flow.sampling import nfe
from tests.support import load_script


def test_bench_mnist_batching_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script("bench/bench_mnist_batching.py")
    n = torch.get_num_threads()
    try:
        args = [
            "--threads",
            "1",
            "--images",
            "1",
            "4",
            "--repeats",
            "1",
            "--requests",
            "4",
            "--steps",
            "2",
            "--rounds",
            "2",
        ]
        result = bench.main([*args, "--json", str(tmp_path / "m.json")])
    finally:
        torch.set_num_threads(n)
    calls, mix = result["calls"], result["mix"]
    assert [r["images"] for r in calls] == [1, 4]
    assert calls[0]["saving"] == 1.0
    assert calls[1]["saving"] == pytest.approx(calls[0]["ms_per_image"] / calls[1]["ms_per_image"])
    # batched: the 4 requests shared forwards (alone they would need 4 x nfe calls)
    assert mix["requests"] == 4
    assert 0 < mix["forwards"] < 4 * nfe(bench.MNIST_DEFAULT_SAMPLER, 2)
    assert mix["mean_rows"] > 1
    assert mix["max_diff_grey_levels"] <= 1.0
    assert json.loads((tmp_path / "m.json").read_text())["mix"]["requests"] == 4
    out = capsys.readouterr().out
    assert "| images per call |" in out and "speed-up" in out
