"""The IF command line on the tiny pipeline: files in, PNGs and trajectories out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.diffusion import load_stage1, sample
from models.diffusion.cli import main
from models.imageio import read_image, read_mask, to_uint8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sample_png_matches_the_operation_and_writes_a_gif(tiny_if_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    rc = main(
        [
            "--model",
            str(tiny_if_dirs[0]),
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
            "--seed",
            "3",
            "--stride",
            "100",
            "--trajectory",
            "gif",
            "sample",
            "--prompt",
            "a photo of a dog",
        ]
    )
    assert rc == 0
    png = np.asarray(Image.open(tmp_path / "sample.png"))
    engine = load_stage1(tiny_if_dirs[0], device="cpu")
    expected = to_uint8(
        sample(engine, "a photo of a dog", generator=torch.Generator().manual_seed(3), stride=100)[0],
        value_range=(-1, 1),
    )
    assert png.shape == (32, 32, 3) and np.array_equal(png, expected)
    with Image.open(tmp_path / "sample_trajectory.gif") as gif:
        assert gif.n_frames >= 10


def test_inpaint_anagram_and_upscale_files(tiny_if_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((40, 56), np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert read_image(tmp_path / "in.png").shape == (1, 3, 40, 56)
    assert set(read_mask(tmp_path / "mask.png").unique().tolist()) == {0.0, 1.0}
    out = tmp_path / "out"
    base = ["--model", str(tiny_if_dirs[0]), "--device", "cpu", "--out", str(out), "--stride", "100"]
    assert (
        main(
            [
                *base,
                "--stage2",
                str(tiny_if_dirs[1]),
                "--upscale",
                "--upscale-steps",
                "2",
                "--trajectory",
                "strip",
                "inpaint",
                "--image",
                str(tmp_path / "in.png"),
                "--mask",
                str(tmp_path / "mask.png"),
            ]
        )
        == 0
    )
    assert (out / "inpaint.png").is_file() and (out / "inpaint_trajectory.png").is_file()
    assert Image.open(out / "inpaint_64.png").size == (64, 64)
    assert main([*base, "anagram", "--prompt", "a", "--prompt", "b", "--view", "identity", "--view", "rot180"]) == 0
    canonical = np.asarray(Image.open(out / "anagram.png"))
    rotated = np.asarray(Image.open(out / "anagram_view1_rot180.png"))
    assert np.array_equal(rotated, canonical[::-1, ::-1])


def test_errors_exit_with_status_2(tmp_path: Path) -> None:
    assert (
        main(
            ["--model", str(tmp_path / "missing"), "--device", "cpu", "--out", str(tmp_path), "sample", "--prompt", "x"]
        )
        == 2
    )


def test_cli_reads_masks_like_the_service(tiny_if_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """Alpha counts: white but transparent is kept, as in a request (one codec, models.imageio)."""
    rng = np.random.default_rng(1)
    image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :, :3] = 255
    rgba[:16, :, 3] = 255  # top half white and opaque: generate; bottom half white but transparent: keep
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "--model",
                str(tiny_if_dirs[0]),
                "--device",
                "cpu",
                "--out",
                str(out),
                "--stride",
                "100",
                "inpaint",
                "--image",
                str(tmp_path / "in.png"),
                "--mask",
                str(tmp_path / "mask.png"),
            ]
        )
        == 0
    )
    result = np.asarray(Image.open(out / "inpaint.png"))
    assert np.array_equal(result[16:], image[16:])
    assert not np.array_equal(result[:16], image[:16])
