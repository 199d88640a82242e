"""Merge the JSON files of ``bench/bench_if.py`` runs (one per phase of ``bench/gpu_check.sh``) into one Markdown
section ready for BENCHMARKS.md, with the issue's targets checked.

    python bench/gpu_table.py RUN.json [RUN.json ...] [--phases phases.tsv] [--combined all.json] > table.md

Sections: the phases (each run's status and seconds, from gpu_check.sh), the targets (IF-I-XL at 64x64: a
classifier-free-guidance step of one request, a 34-step sample, useful TFLOP/s at the largest bucket), the warm-up
of each mode, one UNet call per bucket (modes side by side, ms and TFLOP/s), every operation per mode (ms per step
and peak memory), and the T5 placements. A mode or phase that did not run shows as missing, not as a number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TARGET_STEP_MS = 15.0
TARGET_SAMPLE_S = 0.5
TARGET_TFLOPS = 500.0


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """Each file is one bench run, or a combined file ``{"runs": [...]}``; unreadable files are skipped."""
    runs: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        for run in data.get("runs", [data]):
            run.setdefault("source", path.stem)
            runs.append(run)
    return runs


def read_phases(path: Path | None) -> list[dict[str, str]]:
    """gpu_check.sh's ``name<TAB>status<TAB>seconds`` lines."""
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out.append({"phase": parts[0], "status": parts[1], "seconds": parts[2]})
    return out


def _mode_order(modes: list[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(["off", "off+cl", "default", "default+cl", "reduce-overhead"])}
    return sorted(dict.fromkeys(modes), key=lambda m: (rank.get(m, 9), m))


def _label(mode: str) -> str:
    return {"off": "eager", "off+cl": "eager, channels-last"}.get(mode, mode.replace("+cl", ", channels-last"))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def targets(runs: list[dict[str, Any]]) -> list[str]:
    """The three targets against the best measured mode (real architecture only)."""
    real = [r for r in runs if not r.get("tiny")]
    ops = [row for r in real for row in r.get("rows", []) if row["op"] == "sample" and row.get("finite", True)]
    calls = [row for r in real for row in r.get("buckets", []) if row["stage"] == "stage I" and row.get("finite", True)]
    lines = ["| target (IF-I-XL, 64x64) | goal | best measured | mode | met |", "| --- | ---: | ---: | --- | --- |"]
    if ops:
        step = min(ops, key=lambda r: r["ms_per_step"])
        lines.append(
            f"| CFG step of one request (sample: UNet batch 2 + the loop) | <= {TARGET_STEP_MS:g} ms "
            f"| {step['ms_per_step']:.1f} ms | {_label(step['mode'])} | {_yes(step['ms_per_step'] <= TARGET_STEP_MS)} |"
        )
        full = [r for r in ops if r["steps"] == 34]
        if full:
            best = min(full, key=lambda r: r["seconds"])
            lines.append(
                f"| 34-step sample | <= {TARGET_SAMPLE_S:g} s | {best['seconds']:.3f} s | {_label(best['mode'])} "
                f"| {_yes(best['seconds'] <= TARGET_SAMPLE_S)} |"
            )
    else:
        lines.append("| CFG step of one request | <= 15 ms | not measured | | |")
    two = [r for r in calls if r["bucket"] == 2]
    if two:
        best = min(two, key=lambda r: r["ms"])
        lines.append(
            f"| stage-I UNet call, bucket 2 (the step without the loop) | - | {best['ms']:.1f} ms "
            f"| {_label(best['mode'])} | - |"
        )
    if calls:
        largest = max(r["bucket"] for r in calls)
        best = max((r for r in calls if r["bucket"] == largest), key=lambda r: r["tflops"])
        lines.append(
            f"| useful UNet work at the largest bucket ({largest}) | >= {TARGET_TFLOPS:g} TFLOP/s "
            f"| {best['tflops']:.0f} TFLOP/s | {_label(best['mode'])} | {_yes(best['tflops'] >= TARGET_TFLOPS)} |"
        )
    return lines


def render(runs: list[dict[str, Any]], phases: list[dict[str, str]]) -> str:
    out: list[str] = []
    cards = sorted({r.get("card", "?") for r in runs})
    versions = sorted({f"torch {r.get('torch', '?')}, {r.get('dtype', '?')}" for r in runs})
    out.append(f"### GPU: {', '.join(cards) or 'no run'} ({'; '.join(versions)})\n")
    for r in runs:
        if r.get("summary"):
            out.append(f"- `{r['source']}`: {r['summary']}")
    out.append("")
    if phases:
        out += ["| phase | status | seconds |", "| --- | --- | ---: |"]
        out += [f"| {p['phase']} | {p['status']} | {p['seconds']} |" for p in phases]
        out.append("")
    out += [*targets(runs), ""]

    missing = [
        f"{_label(m)} (`{r['source']}`)"
        for r in runs
        for m in r.get("modes", [])
        if m not in {w["mode"] for w in r.get("warmups", [])}
    ]
    if missing:
        out += [f"Modes not reached (their phase ran out of time or failed): {', '.join(missing)}.", ""]
    warmups = [
        w for r in runs for w in r.get("warmups", []) if w["mode"] != "off" or w.get("active") or w.get("reason")
    ]
    if warmups:
        out += [
            "Warm-up (compile and capture every bucket of the UNets built in that run):\n",
            "| mode | attention | buckets | fast path active | warm-up (s) | per UNet (s) | reason |",
            "| --- | --- | --- | --- | ---: | --- | --- |",
        ]
        for w in warmups:
            per = ", ".join(f"{s:.1f}" for s in w.get("warmup_per_unet_s", []))
            buckets = ",".join(map(str, w.get("buckets", [])))
            out.append(
                f"| {_label(w['mode'])} | {w.get('attention', '')} | {buckets} | {w['active']} | {w['warmup_s']:.1f} "
                f"| {per} | {w.get('reason') or ''} |"
            )
        out.append("")

    calls = [row for r in runs for row in r.get("buckets", [])]
    for stage in dict.fromkeys(c["stage"] for c in calls):
        rows = [c for c in calls if c["stage"] == stage]
        modes = _mode_order([c["mode"] for c in rows])
        out += [
            f"One {stage} UNet call per bucket: ms per call (TFLOP/s of useful work); peak GPU memory in the last column:\n",
            "| bucket | " + " | ".join(_label(m) for m in modes) + " | peak GiB |",
            "| ---: | " + " | ".join("---:" for _ in modes) + " | ---: |",
        ]
        for b in sorted({c["bucket"] for c in rows}):
            cells, peak = [], 0.0
            for m in modes:
                hit = [c for c in rows if c["bucket"] == b and c["mode"] == m]
                cells.append(f"{hit[-1]['ms']:.1f} ({hit[-1]['tflops']:.0f})" if hit else "-")
                peak = max([peak, *(c["peak_gib"] for c in hit)])
            out.append(f"| {b} | " + " | ".join(cells) + f" | {peak:.1f} |")
        out.append("")

    ops = [row for r in runs for row in r.get("rows", [])]
    if ops:
        modes = _mode_order([o["mode"] for o in ops])
        out += [
            "Operations, ms per step (peak GPU memory in GiB):\n",
            "| operation | UNet batch / step | steps | " + " | ".join(_label(m) for m in modes) + " |",
            "| --- | ---: | ---: | " + " | ".join("---:" for _ in modes) + " |",
        ]
        for name in dict.fromkeys(o["op"] for o in ops):
            first = next(o for o in ops if o["op"] == name)
            cells = []
            for m in modes:
                hit = [o for o in ops if o["op"] == name and o["mode"] == m]
                bad = "" if not hit or hit[-1].get("finite", True) else " NaN!"
                cells.append(f"{hit[-1]['ms_per_step']:.1f} ({hit[-1]['peak_gib']:.1f}){bad}" if hit else "-")
            out.append(f"| {name} | {first['unet_batch']} | {first['steps']} | " + " | ".join(cells) + " |")
        out.append("")

    t5 = [row for r in runs for row in r.get("t5", [])]
    if t5:
        out += [
            "T5 v1.1 XXL placements (random weights; both UNets resident, eager; request = encode a new prompt + "
            "sample; a cached prompt skips T5):\n",
            "| placement | T5 on | load (s) | T5 GPU memory (GiB) | encode (ms) | cached (ms) | request (s) "
            "| peak GPU memory (GiB) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in t5:
            if "error" in r:
                out.append(f"| {r['placement']} | not loaded: {r['error']} | | | | | | |")
                continue
            out.append(
                f"| {r['placement']} | {r['where']} | {r['load_s']:.1f} | {r['resident_gib']:.2f} | {r['encode_ms']:.1f} "
                f"| {r['cached_ms']:.2f} | {r['request_s']:.2f} | {r['peak_gib']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="bench_if.py --json files")
    parser.add_argument("--phases", type=Path, default=None, help="gpu_check.sh's phases.tsv")
    parser.add_argument("--combined", type=Path, default=None, help="also write every run into one JSON file")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    phases = read_phases(args.phases)
    if args.combined:
        args.combined.write_text(json.dumps({"runs": runs, "phases": phases}, indent=2))
    text = render(runs, phases)
    print(text)
    return text


if __name__ == "__main__":
    main()
