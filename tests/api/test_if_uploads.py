"""Upload validation of the DeepFloyd endpoints (API alone, real Redis): every bad upload gets its 4xx."""

from __future__ import annotations

import io
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from core.operations import VIEW_NAMES
from core.settings import Settings
from tests.images import gradient, half_mask, noise


@pytest.fixture
def client(redis_server, tmp_path):
    s = Settings(
        redis_url=redis_server.url,
        queue_name=f"up-{uuid.uuid4().hex[:8]}",
        results_dir=tmp_path,
        max_upload_bytes=200_000,
        max_image_pixels=1_000_000,
    )
    with TestClient(create_app(s)) as c:
        yield c


def _problem(r, status: int, field: str, slug: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["name"].split("[")[0] == field, body  # a list item is named field[index]
    if slug:
        assert body["type"] == f"urn:problem:{slug}"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats(client, fmt) -> None:
    r = client.post(
        "/sdedit",
        files={"image": ("x", gradient(fmt=fmt), "application/octet-stream")},
        data={"prompt": "a photo", "i_start": "5"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["params"]["i_start"] == 5 and r.json()["kind"] == "if_sdedit"


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    return buf.getvalue()


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, format="PNG")  # compresses to a few KB, 4 MP when decoded
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,status,slug",
    [
        (b"", 422, "invalid-image"),
        (b"hello, not an image", 415, "unsupported-image-type"),
        (_gif(), 415, "unsupported-image-type"),
        (noise()[: len(noise()) // 2], 422, "invalid-image"),  # truncated PNG
        (noise(fmt="JPEG")[: len(noise(fmt="JPEG")) // 2], 422, "invalid-image"),  # truncated JPEG
        (noise(fmt="WEBP")[: len(noise(fmt="WEBP")) // 2], 422, "invalid-image"),  # truncated WebP
        (gradient(4, 4), 422, "invalid-image"),  # too small
        (bytes(300_000), 413, "upload-too-large"),
        (_huge_png(), 413, "image-too-large"),
    ],
)
def test_bad_uploads(client, data, status, slug) -> None:
    r = client.post("/sdedit", files={"image": ("x.png", data, "image/png")}, data={"prompt": "p"})
    _problem(r, status, "image", slug)
    r = client.post(
        "/inpaint",
        files={"image": ("a.png", gradient(), "image/png"), "mask": ("m.png", data, "image/png")},
        data={"prompt": "p"},
    )
    _problem(r, status, "mask", slug)


def test_missing_file_and_mask_mismatch(client) -> None:
    _problem(client.post("/sdedit", data={"prompt": "p"}), 422, "image")
    r = client.post(
        "/inpaint",
        files={"image": ("a.png", gradient(48, 40), "image/png"), "mask": ("m.png", half_mask(40, 40), "image/png")},
    )
    _problem(r, 422, "mask", "mask-size-mismatch")
    ok = client.post(
        "/inpaint",
        files={
            "image": ("a.png", gradient(48, 40), "image/png"),
            "mask": ("m.png", half_mask(48, 40, "RGBA"), "image/png"),
        },
    )
    assert ok.status_code == 202


@pytest.mark.parametrize(
    "path,data,field",
    [
        ("/sample", {"prompt": ""}, "prompt"),
        ("/sample", {"prompt": "   "}, "prompt"),
        ("/sample", {"prompt": "x" * 501}, "prompt"),
        ("/sample", {"prompt": "a", "guidance": "-1"}, "guidance"),
        ("/sample", {"prompt": "a", "guidance": "1000"}, "guidance"),
        ("/sample", {"prompt": "a", "seed": "-1"}, "seed"),
        ("/sample", {"prompt": "a", "upscale": "maybe"}, "upscale"),
        ("/sample", {}, "prompt"),
        ("/anagram", {"prompts": ["only one"]}, "prompts"),
        ("/anagram", {"prompts": ["a", "b"], "views": ["identity", "spin"]}, "views"),
        ("/anagram", {"prompts": ["a", "b"], "views": ["identity"]}, "views"),
        ("/anagram", {"prompts": ["a", "b", "c"]}, "views"),
        ("/hybrid", {"prompt_low": "a", "prompt_high": "b", "kernel_size": "32"}, "kernel_size"),
        ("/hybrid", {"prompt_low": "a", "prompt_high": "b", "sigma": "0"}, "sigma"),
        ("/hybrid", {"prompt_low": "a"}, "prompt_high"),
    ],
)
def test_bad_form_fields(client, path, data, field) -> None:
    _problem(client.post(path, data=data), 422, field)


@pytest.mark.parametrize(
    "path,data,detail",
    [
        ("/sample", {}, "prompt: required"),
        ("/sample", {"prompt": ""}, "prompt: must not be blank"),  # sent empty, which FastAPI reads as missing
        ("/sample", {"prompt": "   "}, "prompt: must not be blank"),
        (
            "/sample",
            {"prompt": "x" * 501},
            "prompt: 501 characters is over the limit of 500 characters (MAX_PROMPT_CHARS)",
        ),
        ("/sample", {"prompt": "a", "guidance": "1000"}, "guidance: 1000 is over the limit of 30 (MAX_GUIDANCE)"),
        ("/sample", {"prompt": "a", "upscale": "maybe"}, "upscale: must be true or false"),
        ("/hybrid", {"prompt_low": "a", "prompt_high": "b", "kernel_size": "32"}, "kernel_size: must be an odd number"),
        ("/hybrid", {"prompt_low": "a", "prompt_high": "b", "sigma": "0"}, "sigma: must be greater than 0"),
        ("/anagram", {"prompts": ["only one"]}, "prompts: needs at least 2 values (repeat the field), got 1"),
        ("/anagram", {"prompts": ["a", " "]}, "prompts[1]: must not be blank"),
        (
            "/anagram",
            {"prompts": ["a", "b"], "views": ["identity"]},
            "views: 1 views for 2 prompts; give one per prompt",
        ),
        (
            "/anagram",
            {"prompts": ["a", "b"], "views": ["identity", "spin"]},
            "views[1]: must be one of flip_horizontal, flip_vertical, identity, jigsaw, negate, rot180, rot270 or rot90",
        ),
    ],
)
def test_messages_are_written_for_people(client, path, data, detail) -> None:
    r = client.post(path, data=data)
    assert r.status_code == 422 and r.json()["detail"] == detail, r.text


def test_upload_and_empty_field_messages(client) -> None:
    def detail(files: dict) -> str:
        r = client.post("/sdedit", files=files)
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    # multipart, as `curl -F prompt=` sends it: on a required field, "sent empty" rather than "Field required"
    r = client.post("/sample", files={"prompt": (None, "")})
    assert r.json()["detail"] == "prompt: must not be blank"
    assert detail({"image": (None, "")}) == "image: was sent empty; send a PNG, JPEG or WebP file"
    assert (
        detail({"image": (None, "photo.png")})
        == "image: must be a file, not text (with curl, put @ before the file name)"
    )
    assert detail({}) == "image: required (a PNG, JPEG or WebP file)"


def test_limit_messages_name_the_field_and_the_setting(client) -> None:
    def detail(files: dict) -> str:
        r = client.post("/sdedit", files=files)
        assert r.status_code == 413, r.text
        return r.json()["detail"]

    png = ("a.png", gradient(), "image/png")
    # the limits name the field, the size, the limit and the setting (MAX_UPLOAD_BYTES = 200,000 here)
    assert detail({"image": ("x.png", bytes(300_000), "image/png")}) == (
        "image: 293 KiB is over the 195.3 KiB limit (MAX_UPLOAD_BYTES)"
    )
    assert detail({"image": ("x.png", _huge_png(), "image/png")}) == (
        "image: 2000x2000 (4 megapixels) is over the limit of 1 megapixel (MAX_IMAGE_PIXELS)"
    )
    # a body over two uploads plus 1 MiB is refused before it is parsed; just enough of it is read to name the
    # upload over the limit
    r = client.post("/inpaint", files={"image": png, "mask": ("m.png", bytes(1_600_000), "image/png")})
    assert r.status_code == 413 and r.json()["type"] == "urn:problem:upload-too-large"
    assert r.json()["detail"] == (
        "mask: more than 195.3 KiB, the limit of one upload (MAX_UPLOAD_BYTES); "
        "the request body (1.5 MiB) is over the 1.4 MiB limit"
    )
    assert r.json()["errors"][0]["name"] == "mask"
    # a body that is not multipart has no field to name: the limit and its settings
    r = client.post("/inpaint", content=bytes(1_600_000), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["type"] == "urn:problem:request-too-large"
    assert r.json()["detail"] == (
        "the request body (1.5 MiB) is over the 1.4 MiB limit: two uploads of at most 195.3 KiB each "
        "(MAX_UPLOAD_BYTES) plus 1 MiB for the other form fields"
    )


@pytest.mark.parametrize("data,field", [({"t": "1000"}, "t"), ({"t": "-1"}, "t"), ({"method": "magic"}, "method")])
def test_bad_denoise_fields(client, data, field) -> None:
    r = client.post("/denoise", files={"image": ("a.png", gradient(), "image/png")}, data=data)
    _problem(r, 422, field)


def test_sdedit_i_start_range(client) -> None:
    for bad in ("-1", "34", "ten"):
        r = client.post("/sdedit", files={"image": ("a.png", gradient(), "image/png")}, data={"i_start": bad})
        _problem(r, 422, "i_start")


def test_anagram_defaults_and_hybrid_defaults(client) -> None:
    r = client.post("/anagram", data={"prompts": ["a campfire", "an old man"]})
    assert r.status_code == 202 and r.json()["params"]["views"] == ["identity", "flip_vertical"]
    r = client.post("/hybrid", data={"prompt_low": "a skull", "prompt_high": "a waterfall"})
    assert r.status_code == 202
    assert (r.json()["params"]["kernel_size"], r.json()["params"]["sigma"], r.json()["params"]["guidance"]) == (
        33,
        2.0,
        7.0,
    )


def test_view_names_match_the_engine() -> None:
    from models.diffusion.views import VIEWS

    assert tuple(sorted(VIEWS)) == VIEW_NAMES
