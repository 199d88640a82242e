"""The flow command lines as a new user meets them: sampling to a PNG, and clear errors without data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from core.operations import MNIST_DEFAULT_GUIDANCE, MNIST_DEFAULT_SAMPLER, MnistSample, mnist_default_steps
from core.settings import Settings
from models import imageio
from models.flow import sample as sample_cli
from models.flow.checkpoint import load_model
from models.flow.grid import make_grid
from models.flow.sample import main as sample_main
from models.flow.sampling import generate
from tests.support import ROOT
from workers.registry import mnist_network


def test_the_cli_defaults_are_the_service_defaults() -> None:
    assert sample_cli.DEFAULT_SAMPLER == MNIST_DEFAULT_SAMPLER
    assert sample_cli.DEFAULT_GUIDANCE == MNIST_DEFAULT_GUIDANCE
    for digit in (None, 3):
        for sampler in ("midpoint", "euler", "heun"):
            for guidance in (0.0, 1.5, 1.75, 1.8, 5.0):
                expected = mnist_default_steps(digit, sampler, guidance)
                assert sample_cli.default_steps(digit, sampler, guidance) == expected, (digit, sampler, guidance)


def test_sample_cli_writes_the_service_grid(mnist_checkpoints: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "sevens.png"
    args = ["--digit", "7", "--n", "12", "--seed", "5", "--no-progress", "--out"]  # the default solver
    rc = sample_main([*args, str(out), "--class-checkpoint", mnist_checkpoints["MNIST_CLASS_CHECKPOINT"]])
    assert rc == 0
    # what the worker does for the same request: the fast path at MNIST_PRECISION=auto, the same seed
    params = MnistSample(digit=7, n=12, seed=5)
    model, _ = load_model(mnist_checkpoints["MNIST_CLASS_CHECKPOINT"])
    net = mnist_network(model, Settings())
    images = generate(
        net,
        n=12,
        digits=[7] * 12,
        steps=params.solver_steps,
        guidance=params.guidance,
        method=params.sampler.value,
        generator=torch.Generator().manual_seed(5),
    )
    assert out.read_bytes() == imageio.png_bytes(make_grid(images, ncols=10))


def test_sample_cli_unguided_and_a_missing_checkpoint(mnist_checkpoints: dict[str, str], tmp_path: Path) -> None:
    assert (
        sample_main(
            [
                "--n",
                "3",
                "--steps",
                "2",
                "--sampler",
                "heun",
                "--out",
                str(tmp_path / "a.png"),
                "--time-checkpoint",
                mnist_checkpoints["MNIST_TIME_CHECKPOINT"],
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        sample_main(
            ["--n", "3", "--out", str(tmp_path / "b.png"), "--time-checkpoint", str(tmp_path / "missing.safetensors")]
        )
        == 2
    )
    assert not (tmp_path / "b.png").exists()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_evaluate_and_train_without_data_say_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    r = _run(
        "models.flow.evaluate", "--checkpoint", "models/checkpoints/mnist_class_fm.safetensors", "--data", str(empty)
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--data" in r.stderr and "--download" in r.stderr and "MNIST_DATA_DIR" in r.stderr
    assert "--download" in _run("models.flow.evaluate", "--help").stdout  # the flag the message names exists
    run = tmp_path / "run"
    r = _run("models.flow.train", "--objective", "time", "--data", str(empty), "--out", str(run))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not run.exists()  # no empty run folder left behind


def test_tiny_builder_prints_one_line_per_pipeline(tmp_path: Path) -> None:
    r = _run("models.diffusion.tiny", str(tmp_path / "s1"), "--stage2", str(tmp_path / "s2"))
    assert r.returncode == 0
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert lines == [
        f"wrote tiny IF stage-1 pipeline to {tmp_path / 's1'}",
        f"wrote tiny IF stage-2 pipeline to {tmp_path / 's2'}",
    ], lines
