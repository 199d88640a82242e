"""Turn evaluator JSON files (``python -m models.flow.evaluate --json``) into Markdown tables and one plot.

    python -m models.flow.report runs/eval/sweep_steps.json runs/eval/sweep_guidance.json \\
        --steps-guidance 2 --guidance-solver midpoint:6 --png models/checkpoints/class_fm_sweeps.png

Tables: accuracy and FD against steps (every solver at guidance ``--steps-guidance``) and against
guidance (``--guidance-solver``), with the real-vs-real baseline at the same N. Plot: FD and accuracy
against NFE (one line per solver) and against guidance (one line per solver:steps), 2 x 2 panels.
Rows from several files are merged; a (method, steps, guidance) seen twice keeps the last file's row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .pngio import save_panels

Row = dict[str, Any]


def load_rows(paths: list[str]) -> tuple[list[Row], dict[str, Any]]:
    """Rows of every file, de-duplicated by (method, steps, guidance); the baseline of the first file."""
    rows: dict[tuple, Row] = {}
    baseline: dict[str, Any] = {}
    for p in paths:
        doc = json.loads(Path(p).read_text())
        baseline = baseline or doc["baseline"]
        for r in doc["rows"]:
            rows[(r["method"], r["steps"], r["guidance"])] = r
    return list(rows.values()), baseline


def _acc(r: Row) -> str:
    return "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"


def table(rows: list[Row], baseline: dict[str, Any], *, sort: str) -> str:
    """Markdown table sorted by ``sort`` ("nfe" or "guidance"), then by method and steps."""
    key = (
        (lambda r: (r["nfe"], r["method"], r["steps"]))
        if sort == "nfe"
        else (lambda r: (r["guidance"] or 0, r["method"], r["steps"]))
    )
    lines = [
        "| sampler | steps | NFE | guidance | class accuracy | FD vs real half A | sampling time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=key):
        g = "-" if r["guidance"] is None else f"{r['guidance']:g}"
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['nfe']} | {g} | {_acc(r)} | {r['fd']:.2f} | {r['seconds']:.0f} |"
        )
    if baseline:
        lines.append(
            f"| real half B (baseline) | - | - | - | {100 * baseline['classifier_accuracy_b_small']:.1f}% | "
            f"{baseline['fd_real_small']:.2f} | - |"
        )
    return "\n".join(lines)


def panels(
    rows: list[Row], baseline: dict[str, Any], *, steps_guidance: float | None, guidance_solver: tuple[str, int] | None
) -> list[dict]:
    """The four panels of the plot (FD / accuracy against NFE and against guidance)."""
    base_fd = [(baseline["fd_real_small"], f"real vs real {baseline['fd_real_small']:.1f}")] if baseline else []
    out = []
    if steps_guidance is not None:
        sel = [r for r in rows if r["guidance"] is not None and abs(r["guidance"] - steps_guidance) < 1e-9]
        methods = sorted({r["method"] for r in sel})
        by = {m: [(r["nfe"], r) for r in sel if r["method"] == m] for m in methods}
        out.append(
            {
                "title": f"FD against NFE (guidance {steps_guidance:g})",
                "xlabel": "NFE (batched forwards)",
                "ylabel": "FD",
                "series": {m: [(x, r["fd"]) for x, r in v] for m, v in by.items()},
                "hlines": base_fd,
            }
        )
        out.append(
            {
                "title": f"class accuracy against NFE (guidance {steps_guidance:g})",
                "xlabel": "NFE (batched forwards)",
                "ylabel": "accuracy %",
                "series": {m: [(x, 100 * r["accuracy"]) for x, r in v] for m, v in by.items()},
                "hlines": [(99.5, "99.5 %")],
            }
        )
    if guidance_solver is not None:
        method, steps = guidance_solver
        sel = [r for r in rows if r["method"] == method and r["steps"] == steps and r["guidance"] is not None]
        label = f"{method} {steps}"
        out.append(
            {
                "title": f"FD against guidance ({label})",
                "xlabel": "guidance w",
                "ylabel": "FD",
                "series": {label: [(r["guidance"], r["fd"]) for r in sel]},
                "hlines": base_fd,
            }
        )
        out.append(
            {
                "title": f"class accuracy against guidance ({label})",
                "xlabel": "guidance w",
                "ylabel": "accuracy %",
                "series": {label: [(r["guidance"], 100 * r["accuracy"]) for r in sel]},
                "hlines": [(99.5, "99.5 %")],
            }
        )
    return out


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+", help="evaluator JSON files")
    p.add_argument("--steps-guidance", type=float, help="guidance of the steps sweep")
    p.add_argument("--guidance-solver", help="METHOD:STEPS of the guidance sweep")
    p.add_argument("--png", help="write the plot here")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    rows, baseline = load_rows(args.json)
    solver = None
    if args.guidance_solver:
        m, _, s = args.guidance_solver.partition(":")
        solver = (m, int(s))
    parts = []
    if args.steps_guidance is not None:
        sel = [r for r in rows if r["guidance"] is not None and abs(r["guidance"] - args.steps_guidance) < 1e-9]
        parts.append(f"Against steps (guidance {args.steps_guidance:g}):\n\n" + table(sel, baseline, sort="nfe"))
    if solver is not None:
        sel = [r for r in rows if (r["method"], r["steps"]) == solver]
        parts.append(f"Against guidance ({solver[0]} {solver[1]}):\n\n" + table(sel, baseline, sort="guidance"))
    if not parts:
        parts.append(table(rows, baseline, sort="nfe"))
    text = "\n\n".join(parts)
    print(text)
    if args.png:
        save_panels(
            panels(rows, baseline, steps_guidance=args.steps_guidance, guidance_solver=solver),
            args.png,
            title=args.title,
        )
    return text


if __name__ == "__main__":
    main()
