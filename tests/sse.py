"""A small Server-Sent Events reader for the tests (the format of the HTML standard, section 9.2)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)


def parse(lines: Iterable[str]) -> Iterator[Sse]:
    """Events (with their JSON data decoded) from the lines of a ``text/event-stream``."""
    event, data, ident, retry = "message", [], None, None
    for line in lines:
        if line == "":
            if data:
                yield Sse(event, json.loads("\n".join(data)), ident, retry)
            event, data, ident, retry = "message", [], None, None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            ident = value
        elif name == "retry":
            retry = int(value)


def read_events(
    client: httpx.Client,
    job_id: str,
    *,
    last_event_id: str | None = None,
    until: Callable[[Sse], bool] | None = None,
    timeout: float = 60,
) -> list[Sse]:
    """The events of one connection to ``/jobs/{id}/events``: until the server ends the stream, or until
    ``until(event)`` is true (the connection is then closed by the client)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[Sse] = []
    with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for event in parse(r.iter_lines()):
            out.append(event)
            if until is not None and until(event):
                break
    return out
