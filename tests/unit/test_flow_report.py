"""models.flow.report: evaluator JSON -> tables sorted by NFE / guidance, and a plot PNG."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from models.flow.report import main


def _row(method: str, steps: int, nfe: int, w: float, acc: float, fd: float) -> dict:
    return {
        "method": method,
        "steps": steps,
        "nfe": nfe,
        "guidance": w,
        "n": 1000,
        "accuracy": acc,
        "fd": fd,
        "seconds": 10.0,
        "class_histogram": [100] * 10,
    }


def test_tables_and_plot(tmp_path: Path) -> None:
    base = {
        "n_small": 1000,
        "fd_real_small": 5.0,
        "classifier_accuracy_b_small": 0.986,
        "n_half": 7500,
        "fd_real_half": 1.1,
        "classifier_accuracy_b": 0.99,
    }
    a = {
        "baseline": base,
        "rows": [
            _row("euler", 8, 8, 2.0, 0.99, 30.0),
            _row("midpoint", 4, 8, 2.0, 0.995, 20.0),
            _row("midpoint", 2, 4, 2.0, 0.97, 45.0),
        ],
    }
    b = {
        "baseline": base,
        "rows": [
            _row("midpoint", 4, 8, 3.0, 1.0, 40.0),
            _row("midpoint", 4, 8, 1.5, 0.96, 15.0),
            _row("midpoint", 4, 8, 2.0, 0.996, 21.0),
        ],
    }  # replaces a's midpoint 4 @ w=2
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    png = tmp_path / "p.png"
    text = main(
        [
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
            "--steps-guidance",
            "2",
            "--guidance-solver",
            "midpoint:4",
            "--png",
            str(png),
        ]
    )
    steps_part, guidance_part = text.split("Against guidance")
    lines = [ln for ln in steps_part.splitlines() if ln.startswith("| midpoint") or ln.startswith("| euler")]
    assert lines == [
        "| midpoint | 2 | 4 | 2 | 97.0% | 45.00 | 10 |",
        "| euler | 8 | 8 | 2 | 99.0% | 30.00 | 10 |",
        "| midpoint | 4 | 8 | 2 | 99.6% | 21.00 | 10 |",
    ]
    g = [ln.split(" | ")[3] for ln in guidance_part.splitlines() if ln.startswith("| midpoint")]
    assert g == ["1.5", "2", "3"]
    assert "| real half B (baseline) | - | - | - | 98.6% | 5.00 | - |" in text
    img = Image.open(png)
    assert img.size == (1120, 760) and len(img.getcolors(1 << 20)) > 5  # 2 x 2 panels with coloured lines
