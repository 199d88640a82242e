"""Live job events: the event schema, their Redis keys, and the one publish helper (API and worker).

Every event of a job is appended to the job's Redis stream and announced on one pub/sub channel in the same
atomic script, so that

- the stream id is the event id: it orders the events of a job, and ``Last-Event-ID`` on a reconnect maps to
  ``XRANGE <key> (<id> +`` (nothing lost, nothing repeated);
- each API process holds one subscription to the channel and fans the events out to its listeners; no
  listener polls Redis;
- a job has at most one terminal event (``done``), after which nothing more is appended, and a status is
  appended only when it changes (the API and the worker may both publish it).

| event | data | published by |
| --- | --- | --- |
| ``status`` | ``{"status": "queued" or "running", "attempt"?: n}`` | API (submit: queued), worker (running) |
| ``progress`` | ``{"step", "total", "stage"?}`` (stage ``I`` or ``II`` for DeepFloyd) | worker, at most every 0.1 s and at the last step |
| ``preview`` | ``{"step", "total", "stage"?, "name", "url"}``: a small PNG of the current clean-image estimate | worker, every ``PREVIEW_EVERY`` steps of a job run with ``previews=true`` |
| ``queue`` | ``{"position": n}`` (0 = next) | API, to its listeners only (not stored, no id) |
| ``done`` | the job body of ``GET /jobs/{id}`` (``status`` succeeded, failed or canceled, result URLs, error) | API, once the job's real status is terminal |

Redis keys (torch-free; both processes import this module):

| key | type | what |
| --- | --- | --- |
| ``svc:events:<job>`` | stream | the job's events (fields ``event``, ``data``), capped at ``STREAM_MAXLEN``, expiring with the results |
| ``svc:events:<job>:state`` | string | the last status published (``running#<attempt>``, ``queued``, or a terminal status) |
| ``svc:events`` | pub/sub channel | ``"<job> <stream id> <event> <data>"`` for each appended event, and ``"<job> - ended {}"``, a hint that the worker left the job (the API then looks up the job's real status and publishes ``done``) |
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from redis import Redis

from core.protocol import KEY_PREFIX, JobState

log = logging.getLogger(__name__)

EventName = Literal["status", "queue", "progress", "preview", "done"]
EVENT_NAMES: tuple[str, ...] = ("status", "queue", "progress", "preview", "done")
#: a pub/sub-only notice (never stored, never sent to clients): the worker has left the job
ENDED = "ended"
CHANNEL = f"{KEY_PREFIX}:events"
STREAM_MAXLEN = 1000  # events kept per job (approximately: XADD MAXLEN ~); old progress goes first
STREAM_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
PREVIEW_NAME_RE = re.compile(r"^(?:(?:I|II)-)?\d{4,7}\.png$")
PREVIEWS = "previews"  # a job's previews: <results>/<job>/previews/<name>
TERMINAL = tuple(s.value for s in JobState if s.terminal)


def stream_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:events:{job_id}"


def state_key(job_id: str) -> str:
    return f"{KEY_PREFIX}:events:{job_id}:state"


def preview_name(step: int, stage: str | None) -> str:
    """``0005.png``, or ``I-0005.png`` / ``II-0010.png`` for a stage of a DeepFloyd job."""
    return f"{stage}-{step:04d}.png" if stage else f"{step:04d}.png"


def preview_url(job_id: str, name: str) -> str:
    return f"/jobs/{job_id}/previews/{name}"


def stream_id_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"1700000000000-3"`` -> ``(1700000000000, 3)``)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


# KEYS: stream, state. ARGV: event, data, state ('' = none), maxlen, ttl, channel, job id.
# Returns the new stream id, or false when the event was dropped (after a terminal event, or a repeated status).
_PUBLISH = """
local cur = redis.call('GET', KEYS[2])
if cur == 'succeeded' or cur == 'failed' or cur == 'canceled' then return false end
if ARGV[3] ~= '' then
  if cur == ARGV[3] then return false end
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[5])
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7] .. ' ' .. id .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return id
"""


def _state_of(event: str, data: Mapping[str, Any]) -> str:
    if event == "done":
        status = str(data.get("status"))
        if status not in TERMINAL:
            raise ValueError(f"a done event needs a terminal status, not {status!r}")
        return status
    if event == "status":
        status = str(data.get("status"))
        return f"{status}#{data['attempt']}" if data.get("attempt") else status
    return ""


def publish(
    redis: Redis, job_id: str, event: str, data: Mapping[str, Any], *, ttl_s: int, maxlen: int = STREAM_MAXLEN
) -> str | None:
    """Append one event to the job's stream and announce it; returns its id, or None if it was dropped
    (a status equal to the last one, or anything after the terminal event). Raises on Redis errors."""
    if event not in EVENT_NAMES or event == "queue":
        raise ValueError(f"not a stored event: {event!r}")
    payload = json.dumps(data, separators=(",", ":"), default=str)
    result = redis.eval(
        _PUBLISH,
        2,
        stream_key(job_id),
        state_key(job_id),
        event,
        payload,
        _state_of(event, data),
        str(maxlen),
        str(int(ttl_s)),
        CHANNEL,
        job_id,
    )
    if not result:
        return None
    return result.decode() if isinstance(result, bytes) else str(result)


def notify_ended(redis: Redis, job_id: str) -> None:
    """Tell the API processes that the worker left the job (they then publish ``done`` from its real status)."""
    redis.publish(CHANNEL, f"{job_id} - {ENDED} {{}}")


@dataclass(frozen=True)
class Event:
    """One event of a job. ``id`` is the stream id (None for ``queue`` events and the ``ended`` notice)."""

    job_id: str
    id: str | None
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event == "done"


def parse_message(message: bytes | str) -> Event | None:
    """A pub/sub message of ``CHANNEL`` as an Event (None if malformed)."""
    text = message.decode() if isinstance(message, bytes) else message
    parts = text.split(" ", 3)
    if len(parts) != 4:
        return None
    job_id, stream_id, event, data = parts
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return Event(job_id, None if stream_id == "-" else stream_id, event, payload if isinstance(payload, dict) else {})


def parse_entry(job_id: str, stream_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> Event:
    """One entry of ``XRANGE stream_key(job_id)`` as an Event."""

    def text(value: bytes | str) -> str:
        return value.decode() if isinstance(value, bytes) else value

    values = {text(k): text(v) for k, v in fields.items()}
    return Event(job_id, text(stream_id), values.get("event", ""), json.loads(values.get("data", "{}")))
