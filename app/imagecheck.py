"""The decode check of one upload, in a process of its own (PIL only: this module is what the decoder
processes import).

Decoding a big image holds the GIL for long stretches (Pillow's WebP decoder hands back the whole frame as
one 160 MB bytes object: about 100 ms without a GIL switch for 40 megapixels). In a thread of the API process
that stalls the event loop, `/healthz` included, so the API decodes in a small process pool instead.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple, TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")


class Decoded(NamedTuple):
    format: str
    width: int
    height: int
    mode: str


class Refused(NamedTuple):
    """A defect, as (status, problem slug, reason); the caller names the field."""

    status: int
    slug: str
    reason: str


def inspect_image(data: bytes, max_pixels: int) -> Decoded | Refused:
    """Identify and fully decode ``data`` (catches truncated and corrupt files); never raises for bad input."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                return Refused(413, "image-too-large", _too_many_pixels(width, height, max_pixels))
            image.load()
    except UnidentifiedImageError:
        return Refused(415, "unsupported-image-type", "not a PNG, JPEG or WebP image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Refused(413, "image-too-large", f"too many pixels (decompression bomb): {_limit(max_pixels)}")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Refused(422, "invalid-image", f"truncated or corrupt image ({exc})")
    return Decoded(str(image.format), width, height, image.mode)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} megapixel" + ("" if pixels == 1_000_000 else "s")


def _limit(max_pixels: int) -> str:
    return f"the limit is {_megapixels(max_pixels)} (MAX_IMAGE_PIXELS)"


def _too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    """``8000x6000 (48 megapixels) is over the limit of 40 megapixels (MAX_IMAGE_PIXELS)``."""
    return (
        f"{width}x{height} ({_megapixels(width * height)}) is over the limit of {_megapixels(max_pixels)} "
        "(MAX_IMAGE_PIXELS)"
    )


def alpha_mask(data: bytes, max_pixels: int) -> bytes | Refused:
    """An edit mask in OpenAI's convention (its fully transparent pixels are the ones to repaint) as a mask in ours
    (white = generate, black = keep): a grayscale PNG, 255 where the alpha is 0, else 0, EXIF orientation applied as
    the worker applies it to every upload. A mask without an alpha channel is refused (it marks nothing)."""
    found = inspect_image(data, max_pixels)
    if isinstance(found, Refused):
        return found
    with Image.open(io.BytesIO(data), formats=list(FORMATS)) as opened:
        image = ImageOps.exif_transpose(opened)
        if not (image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info):
            return Refused(
                422, "mask-without-alpha", "the mask has no alpha channel (its transparent pixels mark the edit)"
            )
        alpha = image.convert("RGBA").getchannel("A")
    ours = alpha.point(lambda a: 255 if a == 0 else 0)
    out = io.BytesIO()
    ours.save(out, format="PNG")
    return out.getvalue()


T = TypeVar("T")


def _quiet_child() -> None:
    # Ctrl-C reaches the whole process group: the API shuts the pool down itself, so a decoder process
    # ignores SIGINT instead of printing a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DecoderPool:
    """A few spawned processes that run `inspect_image` (spawned, not forked: the API process has threads).

    Started by the app's lifespan and warmed there, so the first upload does not pay for a process start.
    """

    def __init__(self, processes: int | None = None) -> None:
        self._processes = processes or max(1, min(4, os.cpu_count() or 1))
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self._processes, mp_context=context, initializer=_quiet_child)

    def warm_up(self) -> None:
        self._pool.submit(inspect_image, b"", 1).result()

    def inspect(self, data: bytes, max_pixels: int) -> Decoded | Refused:
        """Blocking: call it from a worker thread (the operation handlers run in FastAPI's thread pool).

        A decoder process that dies (killed for memory, a crash in a codec) breaks the whole pool: it is
        replaced and the upload tried once more; dying twice makes it a 422 rather than a 500 for everyone
        after it."""
        return self._run(inspect_image, data, max_pixels)

    def alpha_mask(self, data: bytes, max_pixels: int) -> bytes | Refused:
        """``alpha_mask`` in a decoder process (blocking, as ``inspect``)."""
        return self._run(alpha_mask, data, max_pixels)

    def _run(self, fn: Callable[[bytes, int], T], data: bytes, max_pixels: int) -> T | Refused:
        for attempt in range(2):
            pool = self._pool
            try:
                return pool.submit(fn, data, max_pixels).result()
            except BrokenProcessPool:
                with self._lock:
                    if self._pool is pool:  # the first thread to see it replaces it
                        self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
                if attempt:
                    break
        return Refused(422, "invalid-image", "the image could not be decoded (its decoder process died)")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
