"""The upload decoder processes: a decoder that dies is replaced, so one bad upload cannot break the others."""

from __future__ import annotations

import io
import os

from PIL import Image

from app.imagecheck import Decoded, DecoderPool, Refused


def _png(side: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_dead_decoder_process_is_replaced() -> None:
    pool = DecoderPool(processes=1)
    try:
        assert pool.inspect(_png(), 10**6) == Decoded("PNG", 16, 16, "RGB")
        # a decoder process dies (as when the kernel kills it for memory): the executor is broken for good
        dying = pool._pool.submit(os._exit, 1)
        assert dying.exception() is not None
        assert pool.inspect(_png(20), 10**6) == Decoded("PNG", 20, 20, "RGB")
        assert pool.inspect(b"not an image", 10**6) == Refused(
            415, "unsupported-image-type", "not a PNG, JPEG or WebP image"
        )
    finally:
        pool.close()
