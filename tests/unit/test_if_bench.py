"""bench/bench_if.py runs in --tiny mode on the CPU; the real IF architectures fit the adapters (meta device)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from models.diffusion.adapter import IFAdapter, IFSuperResAdapter

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT.parent / "shared" / "if_configs"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_if", ROOT / "bench" / "bench_if.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_tiny_reports_time_per_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_bench()
    n = torch.get_num_threads()
    try:
        rows = bench.main(["--tiny", "--device", "cpu", "--threads", "1", "--stride", "330",
                           "--ops", "sample", "anagram (4", "upscale", "--json", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(n)
    by_op = {r["op"]: r for r in rows}
    assert by_op["sample"]["steps"] == 4 and by_op["anagram (4 views)"]["unet_batch"] == 8
    assert by_op["upscale 32->64 (stage II)"]["steps"] == 3
    assert all(r["ms_per_step"] > 0 and r["finite"] for r in rows)
    assert "| sample | 2 | 4 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "b.json").read_text())["tiny"] is True


def test_bench_in_place_init_is_seeded_and_sane() -> None:
    bench = load_bench()
    from models.diffusion.tiny import TINY_STAGE1_UNET

    a = bench.build_unet(TINY_STAGE1_UNET, torch.device("cpu"), torch.float32, seed=0)
    b = bench.build_unet(TINY_STAGE1_UNET, torch.device("cpu"), torch.float32, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    w = a.conv_in.weight
    assert abs(float(w.std()) - 1 / (w[0].numel() ** 0.5)) < 0.05
    assert torch.equal(a.conv_norm_out.weight, torch.ones_like(a.conv_norm_out.weight))


@pytest.mark.skipif(not CONFIGS.is_dir(), reason="public IF configs not present")
def test_real_architectures_match_the_adapters_on_the_meta_device() -> None:
    """IF-I-XL (4.3B) and IF-II-L (1.2B) built from their public configs without memory: shapes only."""
    from diffusers import UNet2DConditionModel

    def build(name: str) -> UNet2DConditionModel:
        cfg = {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}
        with torch.device("meta"):
            return UNet2DConditionModel(**cfg).half()

    with torch.device("meta"):
        unet = build("IF-I-XL-v1.0_unet_config.json")
        assert sum(p.numel() for p in unet.parameters()) == 4_304_695_110
        out = IFAdapter(unet)(torch.empty(4, 3, 64, 64), 500, torch.empty(4, 77, 4096))
        assert out.eps.shape == out.v.shape == (4, 3, 64, 64) and out.eps.dtype == torch.float32
        unet2 = build("IF-II-L-v1.0_unet_config.json")
        out2 = IFSuperResAdapter(unet2, torch.empty(1, 3, 256, 256), 250)(
            torch.empty(2, 3, 256, 256), 500, torch.empty(2, 77, 4096))
        assert out2.eps.shape == out2.v.shape == (2, 3, 256, 256)
