"""Which upload makes a too-large multipart body too large: read just enough of the body to name the field.

A request whose declared ``Content-Length`` is over the body limit is refused before FastAPI parses it (413). For a
``multipart/form-data`` body the answer should still name the upload that is too big, as a per-upload 413 does:
``find_oversized`` reads the body as it streams in, with python-multipart's incremental parser, and stops at the
first file part whose bytes pass the per-upload limit (so at most that limit, plus the parts before it, is read:
never the whole body).
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import Receive

READ_CAP_SLACK = 1024 * 1024  # read at most the per-upload limit plus this much before giving up on naming one


@dataclass
class Oversized:
    """A file part over the per-upload limit: its form field and how many bytes of it were read."""

    field: str
    read: int


class _Parts:
    """python-multipart callbacks that follow the current part's field and size."""

    def __init__(self, per_upload: int) -> None:
        self.per_upload = per_upload
        self.name: str | None = None
        self.is_file = False
        self.size = 0
        self.found: Oversized | None = None
        self._header = b""
        self._value = b""

    def on_part_begin(self) -> None:
        self.name, self.is_file, self.size = None, False, 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            _, params = parse_options_header(self._value)
            name = params.get(b"name")
            self.name = name.decode(errors="replace") if name else None
            self.is_file = b"filename" in params
        self._header = self._value = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.found is None and self.is_file:
            self.size += end - start
            if self.size > self.per_upload and self.name:
                self.found = Oversized(self.name, self.size)


async def find_oversized(content_type: str, receive: Receive, per_upload: int, cap: int) -> Oversized | None:
    """The first file part of the body over ``per_upload`` bytes, reading at most ``cap`` bytes; None when the
    body is not multipart or no part passed the limit within the cap."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        return None
    parts = _Parts(per_upload)
    callbacks = {
        name: getattr(parts, name)
        for name in ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_part_data")
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    read = 0
    while read < cap and parts.found is None:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        read += len(chunk)
        try:
            parser.write(chunk)
        except Exception:  # noqa: BLE001 - a malformed body: no field to name, the body limit answers
            return None
        if not message.get("more_body", False):
            break
    return parts.found
