"""Live job events: the event schema, their Redis keys, and their parsing (API and worker).

Every event of a job is appended to the job's Redis stream and announced on one pub/sub channel by the same
script that moves the job record (``core.record``), so that

- the stream id is the event id: it orders the events of a job, and ``Last-Event-ID`` on a reconnect maps to
  ``XRANGE <key> (<id> +`` (nothing lost, nothing repeated);
- each API process holds one subscription to the channel and fans the events out to its listeners and to the
  requests waiting for a job (``Prefer: wait``); no listener polls Redis;
- the state and the event log cannot disagree, a job has exactly one terminal event (``done``, appended by the
  transition that ends it), and nothing is appended after it.

| event | data | appended by |
| --- | --- | --- |
| ``status`` | ``{"status": "queued"}``, or ``{"status": "running", "attempt": n}`` | the submission; a worker's start; a hand-back to the queue (``queued`` again) |
| ``progress`` | ``{"step", "total", "stage"?}`` (stage ``I`` or ``II`` for DeepFloyd) | the worker, at most every 0.1 s; the last step's just before ``done`` |
| ``preview`` | ``{"step", "total", "stage"?, "name", "url"}``: a small PNG of the current clean-image estimate | the worker, every ``PREVIEW_EVERY`` steps of a job run with ``previews=true`` |
| ``queue`` | ``{"position": n}`` (0 = next) | the API, to its listeners only (not stored, no id) |
| ``done`` | the job body of ``GET /jobs/{id}`` (``status`` succeeded, failed or canceled, result URLs, error) | the transition that ends the job: its worker; the API for a queued job it cancels; a worker's recovery for a lost worker's job |

Redis keys (torch-free; both processes import this module):

| key | type | what |
| --- | --- | --- |
| ``svc:events:<job>`` | stream | the job's events (fields ``event``, ``data``), capped at ``STREAM_MAXLEN``, expiring with the results |
| ``svc:events`` | pub/sub channel | ``"<job> <stream id> <event> <data>"`` for each appended event |
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from core.protocol import KEY_PREFIX

EventName = Literal["status", "queue", "progress", "preview", "done"]
EVENT_NAMES: tuple[str, ...] = ("status", "queue", "progress", "preview", "done")
CHANNEL = f"{KEY_PREFIX}:events"
STREAM_MAXLEN = 1000  # events kept per job (approximately: XADD MAXLEN ~); old progress goes first
STREAM_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
PREVIEW_NAME_RE = re.compile(r"^(?:(?:I|II)-)?\d{4,7}\.png$")
PREVIEWS = "previews"  # a job's previews: <results>/<job>/previews/<name>


STREAM_PREFIX = f"{KEY_PREFIX}:events:"


def stream_key(job_id: str) -> str:
    return f"{STREAM_PREFIX}{job_id}"


def preview_name(step: int, stage: str | None) -> str:
    """``0005.png``, or ``I-0005.png`` / ``II-0010.png`` for a stage of a DeepFloyd job."""
    return f"{stage}-{step:04d}.png" if stage else f"{step:04d}.png"


def preview_url(job_id: str, name: str) -> str:
    return f"/jobs/{job_id}/previews/{name}"


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"1700000000000-3"`` -> ``(1700000000000, 3)``)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Event:
    """One event of a job. ``id`` is the stream id (None for ``queue`` events, which are not stored)."""

    job_id: str
    id: str | None
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event == "done"


def split_message(message: bytes | str) -> tuple[str, str, str, bytes | str] | None:
    """A pub/sub message of ``CHANNEL`` as (job id, stream id, event, its data still as JSON), without parsing the
    data: a reader that has no use for the event skips it for the price of one split."""
    if isinstance(message, bytes):
        head = message.split(b" ", 3)
        if len(head) != 4:
            return None
        return head[0].decode(), head[1].decode(), head[2].decode(), head[3]
    parts = message.split(" ", 3)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def parse_message(message: bytes | str) -> Event | None:
    """A pub/sub message of ``CHANNEL`` as an Event (None if malformed)."""
    parts = split_message(message)
    return None if parts is None else parse_split(*parts)


def parse_split(job_id: str, stream_id: str, event: str, data: bytes | str) -> Event | None:
    """The Event of a split message (``split_message``): its data parsed."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return Event(job_id, None if stream_id == "-" else stream_id, event, payload if isinstance(payload, dict) else {})


def parse_entry(job_id: str, stream_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> Event:
    """One entry of ``XRANGE stream_key(job_id)`` as an Event."""

    def text(value: bytes | str) -> str:
        return value.decode() if isinstance(value, bytes) else value

    values = {text(k): text(v) for k, v in fields.items()}
    return Event(job_id, text(stream_id), values.get("event", ""), json.loads(values.get("data", "{}")))
