"""bench/bench_if.py runs in --tiny mode on the CPU and prints its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support import load_script


def load_bench():
    return load_script("bench/bench_if.py")


def test_bench_tiny_reports_time_per_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    n = torch.get_num_threads()
    try:
        rows = bench.main(
            [
                "--tiny",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--stride",
                "330",
                "--ops",
                "sample",
                "anagram (4",
                "upscale",
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
    finally:
        torch.set_num_threads(n)
    by_op = {r["op"]: r for r in rows}
    assert by_op["sample"]["steps"] == 4 and by_op["anagram (4 views)"]["unet_batch"] == 8
    assert by_op["upscale 32->64 (stage II)"]["steps"] == 3
    assert all(r["ms_per_step"] > 0 and r["finite"] for r in rows)
    assert "| sample | 2 | 4 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["tiny"] is True


def test_bench_without_the_public_configs_says_where_to_point(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="IF_CONFIG_DIR"):
        load_bench().main(["--device", "cpu", "--config-dir", str(tmp_path)])
