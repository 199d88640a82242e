"""The GPU check's pieces on the CPU: bench_if.py's modes, bucket timings and T5 placements (tiny pipeline), the
table builder's targets, the FLOP count of the real architectures, and the random-weight T5 builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.diffusion.random_weights import (
    STAGE1_UNET_CONFIG,
    STAGE2_UNET_CONFIG,
    build_random_t5_encoder,
    find_config_dir,
    forward_flops,
    load_unet_config,
)
from models.diffusion.tiny import TINY_STAGE1_UNET
from tests.support import load_script

CONFIGS = find_config_dir()


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "run.json"
    bench = load_script("bench/bench_if.py")
    n = torch.get_num_threads()
    try:
        bench.main(
            [
                "--tiny",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--stride",
                "330",
                "--upscale-steps",
                "2",
                "--modes",
                "off",
                "reduce-overhead",
                "off+cl",
                "--ops-modes",
                "off",
                "--ops",
                "sample",
                "--unet-buckets",
                "--buckets",
                "2",
                "4",
                "--bucket-reps",
                "1",
                "--t5",
                "cpu",
                "8bit",
                "--t5-dir",
                str(out.parent / "t5"),
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(n)
    return json.loads(out.read_text()), str(out)


def test_bench_measures_each_mode_bucket_and_t5_placement(bench_run: tuple[dict, str]) -> None:
    result, _ = bench_run
    assert result["modes"] == ["off", "reduce-overhead", "off+cl"]
    warm = {w["mode"]: w for w in result["warmups"]}
    assert warm["reduce-overhead"]["reason"].startswith("refused: compile mode 'reduce-overhead'")
    assert warm["off+cl"]["active"] and warm["off+cl"]["channels_last"]
    calls = {(b["mode"], b["stage"], b["bucket"]): b for b in result["buckets"]}
    assert set(calls) == {(m, s, b) for m in ("off", "off+cl") for s in ("stage I", "stage II") for b in (2, 4)}
    flops = result["flops_per_row"]["stage I"]
    for row in calls.values():
        assert row["finite"] and row["ms"] > 0
        assert (
            row["tflops"] == pytest.approx(row["bucket"] * flops / row["ms"] * 1e3 / 1e12, rel=1e-9)
            or row["stage"] == "stage II"
        )
    assert [r["mode"] for r in result["rows"]] == ["off"] and result["rows"][0]["steps"] == 4
    t5 = {r["placement"]: r for r in result["t5"]}
    assert t5["cpu"]["where"] == "cpu, float32" and t5["cpu"]["encode_ms"] > 0 and t5["cpu"]["finite"]
    assert t5["cpu"]["cached_ms"] < t5["cpu"]["encode_ms"]
    assert "bitsandbytes" in t5["8bit"]["error"]


def test_table_builder_renders_the_runs(bench_run: tuple[dict, str], tmp_path: Path) -> None:
    _, path = bench_run
    phases = tmp_path / "phases.tsv"
    phases.write_text("tests\tok\t12\nmain\tstopped at its limit of 300s\t301\n")
    table = load_script("bench/gpu_table.py").main(
        [path, "--phases", str(phases), "--combined", str(tmp_path / "a.json")]
    )
    assert "| main | stopped at its limit of 300s | 301 |" in table
    assert "| 2 | " in table and "eager, channels-last" in table and "refused: compile mode" in table
    assert "| cpu | cpu, float32 |" in table and "| 8bit | not loaded: ValueError" in table
    assert "| CFG step of one request | <= 15 ms | not measured | | |" in table  # tiny runs are no measurement
    assert len(json.loads((tmp_path / "a.json").read_text())["runs"]) == 1


def test_targets_are_checked_against_the_best_mode(tmp_path: Path) -> None:
    run = {
        "card": "NVIDIA H200",
        "tiny": False,
        "modes": ["off", "reduce-overhead", "default"],
        "warmups": [
            {"mode": "off", "active": False, "warmup_s": 0.0, "warmup_per_unet_s": [], "reason": None},
            {"mode": "reduce-overhead", "active": True, "warmup_s": 90.0, "warmup_per_unet_s": [60, 30]},
        ],
        "rows": [
            {
                "mode": "off",
                "op": "sample",
                "unet_batch": 2,
                "steps": 34,
                "seconds": 1.5,
                "ms_per_step": 44.1,
                "peak_gib": 12.0,
            },
            {
                "mode": "reduce-overhead",
                "op": "sample",
                "unet_batch": 2,
                "steps": 34,
                "seconds": 0.48,
                "ms_per_step": 14.1,
                "peak_gib": 14.0,
            },
        ],
        "buckets": [
            {"mode": m, "stage": "stage I", "bucket": 32, "ms": ms, "tflops": tf, "peak_gib": 20.0}
            for m, ms, tf in (("off", 230.0, 400.5), ("reduce-overhead", 190.0, 484.9))
        ],
    }
    (tmp_path / "r.json").write_text(json.dumps(run))
    table = load_script("bench/gpu_table.py").main([str(tmp_path / "r.json")])
    assert (
        "| CFG step of one request (sample: UNet batch 2 + the loop) | <= 15 ms | 14.1 ms | reduce-overhead | yes |"
        in table
    )
    assert "| 34-step sample | <= 0.5 s | 0.480 s | reduce-overhead | yes |" in table
    assert (
        "| useful UNet work at the largest bucket (32) | >= 500 TFLOP/s | 485 TFLOP/s | reduce-overhead | **no** |"
        in table
    )
    assert "Modes not reached (their phase ran out of time or failed): default (`r`)." in table
    assert "| 32 | 230.0 (400) | 190.0 (485) | 20.0 |" in table
    assert "| reduce-overhead |  |  | True | 90.0 | 60.0, 30.0 |  |" in table and "| eager |  |  | False" not in table


@pytest.mark.skipif(CONFIGS is None, reason="public IF configs not present (set IF_CONFIG_DIR)")
def test_forward_flops_of_the_real_architectures() -> None:
    stage1 = load_unet_config(STAGE1_UNET_CONFIG, CONFIGS)
    assert forward_flops(stage1) == 2_879_014_895_616  # the 2.88 TFLOP per 64x64 image
    assert forward_flops(stage1, batch=2) == 2 * 2_879_014_895_616
    assert forward_flops(load_unet_config(STAGE2_UNET_CONFIG, CONFIGS)) == 3_089_756_061_696  # per 256x256 image
    assert forward_flops(TINY_STAGE1_UNET) == 195_718_912


def test_random_t5_encoder_is_seeded_and_shaped() -> None:
    config = {
        "vocab_size": 100,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
        "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": True,
        "_name_or_path": "x",
        "model_type": "t5",
    }
    a = build_random_t5_encoder(config, "cpu", torch.float32, seed=3)
    b = build_random_t5_encoder(config, "cpu", torch.float32, seed=3)
    ids = torch.tensor([[5, 6, 7, 1, 0]])
    out = a(ids, attention_mask=(ids > 0).long())[0]
    assert out.shape == (1, 5, 32) and torch.isfinite(out).all() and not a.training
    assert torch.equal(out, b(ids, attention_mask=(ids > 0).long())[0])
    assert all(not p.requires_grad for p in a.parameters())
    assert a.encoder.embed_tokens.weight is a.shared.weight  # tied, as in T5
