"""The one image codec (models.imageio): what an upload or a file means, and deterministic encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models import imageio


def _bytes(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied_to_images_and_masks() -> None:
    arr = np.zeros((20, 40), np.uint8)
    arr[:, :10] = 255  # white on the left of a 40 wide, 20 high picture
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown 20 wide, 40 high, white on top
    data = _bytes(Image.fromarray(arr).convert("RGB"), "JPEG", exif=exif, quality=100)
    image = imageio.decode_image(data)
    assert image.shape == (1, 3, 40, 20)
    assert image[0, :, :8].mean() > 0.9 and image[0, :, -8:].mean() < -0.9
    mask = imageio.decode_mask(_bytes(Image.fromarray(arr), "PNG"))
    assert mask.shape == (1, 1, 20, 40)  # a PNG without EXIF keeps its layout


def test_mask_thresholds_luminance_and_alpha() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # all white ...
    rgba[:2, :, 3] = 255  # ... opaque on top, transparent below
    mask = imageio.decode_mask(_bytes(Image.fromarray(rgba, "RGBA")))
    assert mask[0, 0].tolist() == [[1.0] * 4] * 2 + [[0.0] * 4] * 2
    grey = imageio.decode_mask(_bytes(Image.fromarray(np.array([[127, 128]], np.uint8).repeat(8, 0))))
    assert grey[0, 0, 0].tolist() == [0.0, 1.0]


def test_transparent_pixels_of_an_image_become_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    image = imageio.decode_image(_bytes(Image.fromarray(rgba, "RGBA")))
    assert image[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0] and image[0, :, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_png_round_trip_is_exact_and_deterministic() -> None:
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    data = imageio.png_bytes(x, value_range=(-1, 1))
    assert data == imageio.png_bytes(x.clone(), value_range=(-1, 1))
    back = imageio.decode_image(data)[0]
    assert torch.allclose(back, x, atol=1 / 127.5)
    assert imageio.png_bytes(back, value_range=(-1, 1)) == data


def test_strip_and_gif() -> None:
    frames = [torch.full((3, 4, 4), v) for v in torch.linspace(-1, 1, 30).tolist()]
    strip = imageio.strip(frames, max_frames=5)
    assert strip.shape == (3, 4, 20)
    assert strip[0, 0, 0] == -1 and strip[0, 0, -1] == 1  # first and last frames included
    with Image.open(io.BytesIO(imageio.gif_bytes(frames, scale=2, hold_last=3))) as gif:
        assert gif.size == (8, 8) and gif.n_frames >= 2
    with pytest.raises(ValueError, match="at least one frame"):
        imageio.gif_bytes([])
