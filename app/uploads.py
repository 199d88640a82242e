"""Validation of uploaded images and masks, before anything is enqueued (PIL only, no torch).

Accepted: PNG, JPEG and WebP, identified by their content (not the file name or the declared type).

| problem | status | type |
| --- | --- | --- |
| empty file, truncated or corrupt image | 422 | urn:problem:invalid-image |
| another format (GIF, BMP, text, ...) | 415 | urn:problem:unsupported-image-type |
| more bytes than MAX_UPLOAD_BYTES | 413 | urn:problem:upload-too-large |
| more pixels than MAX_IMAGE_PIXELS (decompression bombs) | 413 | urn:problem:image-too-large |
| a request body over two uploads plus 1 MiB (``app.main``) | 413 | urn:problem:request-too-large |
| smaller than 8x8 | 422 | urn:problem:invalid-image |
| a mask whose size differs from the image's | 422 | urn:problem:mask-size-mismatch |

Every problem names the form field in `errors[0].name`, and a limit problem the setting that sets it
(``image: 50.3 MiB is over the 10 MiB limit (MAX_UPLOAD_BYTES)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import UploadFile

from app.imagecheck import DecoderPool, Refused, inspect_image
from app.problems import Problem
from core.settings import Settings

MIN_SIDE = 8


def human_bytes(n: int) -> str:
    """``10485760`` -> ``10 MiB``, ``52742553`` -> ``50.3 MiB``, ``200000`` -> ``195.3 KiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class CheckedImage:
    field: str
    data: bytes
    format: str
    width: int
    height: int
    mode: str


def _problem(status: int, slug: str, field: str, reason: str) -> Problem:
    return Problem(status, slug, f"{field}: {reason}", errors=[{"name": field, "in": "body", "reason": reason}])


def read_image(upload: UploadFile, field: str, settings: Settings, decoder: DecoderPool | None = None) -> CheckedImage:
    """Read and fully decode one upload; raise the documented 4xx problem on any defect.

    Blocking (file read and a full decode): call it from a worker thread, never on the event loop
    (the operation routes are plain ``def`` handlers, which FastAPI runs in its thread pool). With a
    ``decoder`` the decode runs in its processes, so it cannot hold this process's GIL."""
    upload.file.seek(0)
    data = upload.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        limit = human_bytes(settings.max_upload_bytes)
        sent = human_bytes(upload.size) if upload.size else f"more than {limit}"  # size: set by the form parser
        raise _problem(413, "upload-too-large", field, f"{sent} is over the {limit} limit (MAX_UPLOAD_BYTES)")
    if not data:
        raise _problem(422, "invalid-image", field, "the file is empty")
    return check_image(data, field, settings, decoder)


def check_image(data: bytes, field: str, settings: Settings, decoder: DecoderPool | None = None) -> CheckedImage:
    found = (
        decoder.inspect(data, settings.max_image_pixels) if decoder else inspect_image(data, settings.max_image_pixels)
    )
    if isinstance(found, Refused):
        raise _problem(found.status, found.slug, field, found.reason)
    if min(found.width, found.height) < MIN_SIDE:
        raise _problem(
            422, "invalid-image", field, f"{found.width}x{found.height} is smaller than {MIN_SIDE}x{MIN_SIDE}"
        )
    return CheckedImage(field, data, found.format, found.width, found.height, found.mode)


def check_same_size(upload: CheckedImage, reference: CheckedImage) -> None:
    """422 ``<field>-size-mismatch`` (e.g. ``mask-size-mismatch``) unless both uploads have the same size."""
    if (upload.width, upload.height) != (reference.width, reference.height):
        raise _problem(
            422,
            f"{upload.field}-size-mismatch",
            upload.field,
            f"{upload.field} is {upload.width}x{upload.height} but the {reference.field} is "
            f"{reference.width}x{reference.height}",
        )
