"""The job record: one Redis hash per job, and the scripts that move it from state to state.

The record is RQ's own job hash (``rq:job:<id>``, from RQ's public ``Job.key_for``): RQ's fields (``status``,
``data``, ``origin``, ``timeout``, ...) and the service's, below, side by side. Every transition is one atomic
script (or, for a submission, one MULTI pipeline with RQ's enqueue) that writes the record, RQ's ``status`` and
registries, and appends the job's event (``core.events``) together, so that the state, RQ's view and the event
log cannot disagree. The terminal transition appends ``done`` with the job body exactly as ``GET /jobs/{id}``
shows it (``render``): that is the one push point that waits, webhooks and metrics hang on.

Service fields (strings; JSON where marked):

| field | what |
| --- | --- |
| ``state`` | ``queued``, ``running``, ``succeeded``, ``failed`` or ``canceled``; RQ's ``status`` follows it (``RQ_STATUS``) |
| ``kind``, ``func`` | the operation (``mnist_sample``, ...) and the dotted name of its job function |
| ``params`` | JSON: the validated parameters, the seed filled in |
| ``submitted``, ``started``, ``finished`` | ISO 8601 UTC times: submission, start of the current attempt, end |
| ``attempt`` | how many times a worker started the job |
| ``retries`` | re-runs left after a lost worker (``JOB_RETRIES``) |
| ``worker`` | the worker that runs it, or ran it last |
| ``progress`` | JSON ``{"step", "total", "stage"?}`` |
| ``files``, ``main`` | JSON list of result names (the manifest last), and the main file |
| ``error_code``, ``error`` | of a failed job (``core.protocol.JobError``) |
| ``cancel`` | ``1`` once a client asked to cancel |
| ``timings`` | JSON: ``queued_s``, ``run_s``, ``model_s`` |
| ``request_id`` | the ``X-Request-ID`` of the submission (the worker's log lines about the job carry it) |
| ``traceparent`` | W3C trace context of the submission's span, when tracing is on (``core.tracing``) |
| ``webhook``, ``webhook_events`` | the webhook URL and its events (comma-separated), from the submission |
| ``webhook_state`` | of the ``completed`` delivery: ``pending``, ``retrying``, ``delivered`` or ``failed`` |
| ``webhook_attempts``, ``webhook_status``, ``webhook_delivered_at``, ``webhook_error`` | of the ``completed`` delivery: attempts so far, the HTTP status of the last one, when it was delivered, why the last one failed |
| ``webhook_body``, ``webhook_first`` | the payload of the ``completed`` delivery (the body of the ``done`` event) and the unix time it was queued (its retry window starts there) |
| ``webhook_progress_at``, ``webhook_progress_id`` | unix time and event id of the last ``progress`` delivery queued (its 0.5 s throttle, its ``webhook-id``) |

Transitions:

| transition | who | state | event |
| --- | --- | --- | --- |
| submit | API (``submit_commands``) | queued | ``status`` queued |
| start (``START``) | a worker, for up to N jobs at once | running, attempt + 1 | ``status`` running; webhook ``start`` |
| progress, preview (``EVENT``) | the worker running it | (``progress``) | ``progress``, ``preview``; webhook ``progress`` (throttled) |
| finish (``FINISH``) | that worker; the API for a queued job it cancels; any worker for a lost worker's job | terminal | ``done``; webhook ``completed`` |
| hand back (``REQUEUE``) | a stopping worker; any worker for a lost worker's job with retries left | queued | ``status`` queued |
| cancel a running job (``CANCEL_RUNNING``) | API | (``cancel`` = 1) | none: published to the workers |

A webhook delivery is queued by the transition itself (``core.webhooks``), only for a job whose record has a
webhook that wants the event: the scripts read ``webhook`` and ``webhook_events`` with the HMGET they make anyway,
so a job without a webhook costs no extra command.

Scripts compute the record and stream keys of the jobs they touch from the prefixes they are given (single Redis
instance, as RQ itself; no Redis Cluster).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from rq.job import Job

from core import webhooks
from core.protocol import TERMINAL_STATES, JobState

#: RQ's ``status`` for each state of ours
RQ_STATUS = {
    "queued": "queued",
    "running": "started",
    "succeeded": "finished",
    "failed": "failed",
    "canceled": "canceled",
}
RECORD_PREFIX = Job.key_for("")  # "rq:job:"
#: the fields of ours in RQ's hash (a test checks that RQ uses none of these names)
FIELDS = (
    "state",
    "kind",
    "func",
    "params",
    "submitted",
    "started",
    "finished",
    "attempt",
    "retries",
    "worker",
    "progress",
    "files",
    "main",
    "error_code",
    "error",
    "cancel",
    "timings",
    "request_id",
    "traceparent",
    "webhook",
    "webhook_events",
    "webhook_state",
    "webhook_attempts",
    "webhook_status",
    "webhook_delivered_at",
    "webhook_error",
    "webhook_body",
    "webhook_first",
    "webhook_progress_at",
    "webhook_progress_id",
)


def record_key(job_id: str) -> str:
    return f"{RECORD_PREFIX}{job_id}"


def utc_now() -> str:
    """Now as ISO 8601 UTC with milliseconds (``2026-12-04T10:00:00.123Z``), the service's one time format."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return orjson.loads(text)
    except ValueError:
        return default


def dumps(value: Any) -> str:
    """Compact JSON, as every event and record field is stored."""
    return orjson.dumps(value, default=str).decode()


@dataclass
class JobRecord:
    """A job record as read from Redis (``from_hash``), and the body clients see of it (``body``)."""

    id: str
    state: JobState
    kind: str = "unknown"
    func: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    submitted: str | None = None
    started: str | None = None
    finished: str | None = None
    attempt: int = 0
    retries: int = 0
    worker: str | None = None
    progress: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    main: str | None = None
    error_code: str | None = None
    error: str | None = None
    cancel: bool = False
    timings: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None  # RQ's ``timeout`` field: the job's time limit
    request_id: str | None = None
    traceparent: str | None = None
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ()
    webhook_state: str | None = None
    webhook_attempts: int = 0
    webhook_status: int | None = None
    webhook_delivered_at: str | None = None
    webhook_error: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[Any, Any]) -> JobRecord | None:
        """The record from an HGETALL (or the fields of one); None if it is not a job of this service."""
        wanted = {*FIELDS, "timeout"}
        values = {key: _text(v) for k, v in raw.items() if (key := _text(k)) in wanted and v is not None}
        state = values.get("state")
        if state not in {s.value for s in JobState}:
            return None
        timeout = values.get("timeout")
        return cls(
            id=job_id,
            state=JobState(state),
            kind=values.get("kind") or "unknown",
            func=values.get("func") or "",
            params=_json(values.get("params"), {}),
            submitted=values.get("submitted") or None,
            started=values.get("started") or None,
            finished=values.get("finished") or None,
            attempt=int(values.get("attempt") or 0),
            retries=int(values.get("retries") or 0),
            worker=values.get("worker") or None,
            progress=_json(values.get("progress"), None),
            files=_json(values.get("files"), []),
            main=values.get("main") or None,
            error_code=values.get("error_code") or None,
            error=values.get("error") or None,
            cancel=values.get("cancel") == "1",
            timings=_json(values.get("timings"), {}),
            timeout_s=float(timeout) if timeout and timeout.replace(".", "", 1).isdigit() else None,
            request_id=values.get("request_id") or None,
            traceparent=values.get("traceparent") or None,
            webhook=values.get("webhook") or None,
            webhook_events=tuple(e for e in (values.get("webhook_events") or "completed").split(",") if e),
            webhook_state=values.get("webhook_state") or None,
            webhook_attempts=int(values.get("webhook_attempts") or 0),
            webhook_status=int(status) if (status := values.get("webhook_status") or "").isdigit() else None,
            webhook_delivered_at=values.get("webhook_delivered_at") or None,
            webhook_error=values.get("webhook_error") or None,
        )

    @property
    def wants_completed(self) -> bool:
        """Whether the job's end queues a ``completed`` delivery (``FINISH`` decides the same from the record)."""
        return bool(self.webhook) and "completed" in self.webhook_events

    def webhook_body(self) -> dict[str, Any] | None:
        """The ``webhook`` object of the job body: the URL, its events, and the state of the ``completed``
        delivery (``state`` None until the job ends, or when ``completed`` is not wanted)."""
        if not self.webhook:
            return None
        return {
            "url": self.webhook,
            "events": list(self.webhook_events),
            "state": self.webhook_state,
            "attempts": self.webhook_attempts,
            "last_status": self.webhook_status,
            "last_error": self.webhook_error,
            "delivered_at": self.webhook_delivered_at,
        }

    def body(self, position: int | None = None) -> dict[str, Any]:
        """The job as ``GET /jobs/{id}`` shows it (``app.schemas.JobBody`` documents it)."""
        state = self.state
        succeeded = state is JobState.succeeded
        results = {name: f"/jobs/{self.id}/files/{name}" for name in self.files} if succeeded else {}
        return {
            "id": self.id,
            "kind": self.kind,
            "status": state.value,
            "progress": self.progress if state is not JobState.queued else None,
            "queue_position": position if state is JobState.queued else None,
            "created_at": self.submitted,
            "started_at": self.started if state is not JobState.queued else None,
            "finished_at": self.finished if state.terminal else None,
            "params": self.params,
            "result_url": f"/jobs/{self.id}/result" if succeeded and self.main else None,
            "results": results,
            "error": self.error if state is JobState.failed else None,
            "error_code": self.error_code if state is JobState.failed else None,
            "cancel_requested": self.cancel,
            "attempts": max(self.attempt, 1),
            "request_id": self.request_id,
            "webhook": self.webhook_body(),
        }


# ---- submission -----------------------------------------------------------------------------------------------


def new_fields(
    *,
    kind: str,
    func: str,
    params: Mapping[str, Any],
    retries: int,
    submitted: str | None = None,
    request_id: str | None = None,
    traceparent: str | None = None,
    webhook: str | None = None,
    webhook_events: Sequence[str] = (),
) -> dict[str, str]:
    """The service's fields of a new record (state queued), written with RQ's own at enqueue (the optional ones
    only when they have a value: the same one HSET either way)."""
    fields = {
        "state": JobState.queued.value,
        "kind": kind,
        "func": func,
        "params": dumps(dict(params)),
        "submitted": submitted or utc_now(),
        "attempt": "0",
        "retries": str(retries),
    }
    if request_id:
        fields["request_id"] = request_id
    if traceparent:
        fields["traceparent"] = traceparent
    if webhook:
        fields["webhook"] = webhook
        fields["webhook_events"] = ",".join(webhook_events or ("completed",))
    return fields


# ---- scripts ----------------------------------------------------------------------------------------------------

_TERMINAL_LUA = (
    "local function terminal(s) return s == 'succeeded' or s == 'failed' or s == 'canceled' end\n" + webhooks.QUEUE_LUA
)

# KEYS: held list of the worker, RQ queue, RQ started registry, webhook schedule.
# ARGV: job id already moved into the held list ('' = none), how many more to take from the queue, worker name,
#       now (ISO), now (RQ's format), started-registry score, stream maxlen, events channel, record prefix,
#       stream prefix, now (unix seconds).
# Returns one entry per job taken: {id, 1, HMGET of START_FIELDS after the start} for a started job, or
# {id, 0, state} for one that is not startable (canceled while being claimed, deleted, not the service's).
# A job whose webhook wants ``start`` gets that delivery queued (once per attempt).
START_FIELDS = (
    "state",
    "attempt",
    "kind",
    "func",
    "params",
    "submitted",
    "retries",
    "cancel",
    "timeout",
    "request_id",
    "traceparent",
    "webhook",
    "webhook_events",
)
START = (
    _TERMINAL_LUA
    + """
local out = {}
local function start(id)
  local rk = ARGV[9] .. id
  local f = redis.call('HMGET', rk, 'state', 'attempt', 'kind', 'func', 'params', 'submitted', 'retries',
    'cancel', 'timeout', 'request_id', 'traceparent', 'webhook', 'webhook_events')
  if f[1] ~= 'queued' then
    redis.call('LREM', KEYS[1], 1, id)
    out[#out + 1] = {id, 0, f[1] or ''}
    return
  end
  local attempt = tonumber(f[2] or '0') + 1
  redis.call('HSET', rk, 'state', 'running', 'status', 'started', 'attempt', attempt, 'started', ARGV[4],
    'started_at', ARGV[5], 'worker', ARGV[3], 'worker_name', ARGV[3], 'progress', '')
  local data = '{"status":"running","attempt":' .. attempt .. '}'
  local sid = redis.call('XADD', ARGV[10] .. id, 'MAXLEN', '~', ARGV[7], '*', 'event', 'status', 'data', data)
  redis.call('PUBLISH', ARGV[8], id .. ' ' .. sid .. ' status ' .. data)
  redis.call('ZADD', KEYS[3], ARGV[6], id .. ':a' .. attempt)
  if wants(f[12], f[13], 'start') then redis.call('ZADD', KEYS[4], ARGV[11], id .. ':start') end
  f[1], f[2] = 'running', tostring(attempt)
  out[#out + 1] = {id, 1, f}
end
if ARGV[1] ~= '' then start(ARGV[1]) end
if tonumber(ARGV[2]) > 0 then
  local more = redis.call('LMPOP', 1, KEYS[2], 'LEFT', 'COUNT', ARGV[2])
  if more then
    redis.call('RPUSH', KEYS[1], unpack(more[2]))
    for _, id in ipairs(more[2]) do start(id) end
  end
end
return out
"""
)

# KEYS: record, stream, webhook schedule. ARGV: job id, event, data, attempt, maxlen, channel, progress JSON
# ('' = unchanged), now (unix seconds), webhook progress interval (s).
# Appends a progress or preview event of the running attempt; false if the job is not running that attempt. A
# progress event of a job whose webhook wants ``progress`` queues that delivery, at most once per interval (a
# pending one is replaced: the receiver gets the latest progress); one more command than without (the ZADD).
EVENT = (
    webhooks.QUEUE_LUA
    + """
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'webhook', 'webhook_events', 'webhook_progress_at')
if cur[1] ~= 'running' or cur[2] ~= ARGV[4] then return false end
local hook = ARGV[2] == 'progress' and wants(cur[3], cur[4], 'progress')
  and tonumber(ARGV[8]) - tonumber(cur[5] or '0') >= tonumber(ARGV[9])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[2], 'data', ARGV[3])
redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' ' .. id .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
if hook then
  if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[1], 'progress', ARGV[7], 'webhook_progress_at', ARGV[8], 'webhook_progress_id', id)
  else
    redis.call('HSET', KEYS[1], 'webhook_progress_at', ARGV[8], 'webhook_progress_id', id)
  end
  redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1] .. ':progress')
elseif ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'progress', ARGV[7])
end
return id
"""
)

# KEYS: record, stream, held list of the worker, RQ queue, RQ started registry, RQ registry of the outcome, webhook
#       schedule.
# ARGV: job id, state, RQ status, ttl, registry score, stream maxlen, events channel, progress data ('' = none),
#       done data, guard, now (unix seconds), then field/value pairs. Guard: '' = any job not yet terminal;
#       'queued' = only a queued one; 'attempt:<n>' = only while attempt n runs or waits; 'worker:<name>' = only
#       while <name> runs it.
# Returns 1, 0 if the guard refused (another transition came first), or -1 if the record is gone (the job was
# deleted meanwhile: the caller removes what it stored for it). A job whose webhook wants ``completed`` gets that
# delivery queued (one ZADD) with the done data as its body (``webhook_body``, in the same HSET).
FINISH = (
    _TERMINAL_LUA
    + """
local cur = redis.call('HMGET', KEYS[1], 'state', 'worker', 'attempt', 'webhook', 'webhook_events')
local st = cur[1]
if not st then
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  return -1
end
if terminal(st) then return 0 end
local guard = ARGV[10]
if guard == 'queued' and st ~= 'queued' then return 0 end
if string.sub(guard, 1, 7) == 'worker:' and (st ~= 'running' or cur[2] ~= string.sub(guard, 8)) then return 0 end
if string.sub(guard, 1, 8) == 'attempt:' and cur[3] ~= string.sub(guard, 9) then return 0 end
if st == 'queued' then redis.call('LREM', KEYS[4], 0, ARGV[1]) end
local hook = wants(cur[4], cur[5], 'completed')
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
if hook then
  for _, v in ipairs({'webhook_state', 'pending', 'webhook_body', ARGV[9], 'webhook_first', ARGV[11]}) do
    fields[#fields + 1] = v
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'status', ARGV[3], unpack(fields))
if ARGV[8] ~= '' then
  local pid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'event', 'progress', 'data', ARGV[8])
  redis.call('PUBLISH', ARGV[7], ARGV[1] .. ' ' .. pid .. ' progress ' .. ARGV[8])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'event', 'done', 'data', ARGV[9])
redis.call('PUBLISH', ARGV[7], ARGV[1] .. ' ' .. id .. ' done ' .. ARGV[9])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if st == 'running' then
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1] .. ':a' .. (cur[3] or ''))
end
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[1])
if hook then redis.call('ZADD', KEYS[7], ARGV[11], ARGV[1] .. ':completed') end
return 1
"""
)

# KEYS: record, stream, held list of the worker, RQ queue, RQ started registry.
# ARGV: job id, worker name (guard: the job must be running on it), consume a retry ('1' or '0'), stream maxlen,
#       events channel.
# Returns 1 when the job is back at the head of the queue, 0 if the guard refused, -1 if no retry was left.
REQUEUE = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'worker', 'retries', 'attempt')
if not cur[1] then
  redis.call('LREM', KEYS[3], 1, ARGV[1])
  return 0
end
if cur[1] ~= 'running' or cur[2] ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  local left = tonumber(cur[3] or '0')
  if left <= 0 then return -1 end
  redis.call('HSET', KEYS[1], 'retries', left - 1)
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'status', 'queued', 'progress', '')
local data = '{"status":"queued"}'
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', 'status', 'data', data)
redis.call('PUBLISH', ARGV[5], ARGV[1] .. ' ' .. id .. ' status ' .. data)
redis.call('LREM', KEYS[3], 1, ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1] .. ':a' .. (cur[4] or ''))
redis.call('LPUSH', KEYS[4], ARGV[1])
return 1
"""

# KEYS: record. ARGV: job id, cancel channel. Marks a running job canceled-on-request and tells the workers.
# Returns the job's state ('' if it does not exist).
CANCEL_RUNNING = """
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return st or ''
"""

# KEYS: live workers (sorted set), held list of the worker, RQ queue.
# ARGV: worker name, now (unix seconds), record prefix.
# A worker whose heartbeat expired: its claimed-but-not-started jobs go back to the head of the queue, and the
# ids of the jobs it was running are returned (the caller hands each back or fails it); false if it is alive.
RECOVER = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
local running = {}
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #ids, 1, -1 do
  local id = ids[i]
  local st = redis.call('HGET', ARGV[3] .. id, 'state')
  if st == 'running' then
    running[#running + 1] = id
  else
    redis.call('LREM', KEYS[2], 0, id)
    if st == 'queued' then redis.call('LPUSH', KEYS[3], id) end
  end
end
return running
"""

# KEYS: record, RQ queue, tombstone. ARGV: job id, then the fields to read (``VIEW_FIELDS``).
# Returns {the fields' values (HMGET), its queue position or false, the tombstone's value (false: none) or 1}.
VIEW = """
local names = {}
for i = 2, #ARGV do names[#names + 1] = ARGV[i] end
local values = redis.call('HMGET', KEYS[1], unpack(names))
local st = values[1]
if not st then return {values, false, redis.call('GET', KEYS[3])} end
local pos = false
if st == 'queued' then pos = redis.call('LPOS', KEYS[2], ARGV[1]) end
return {values, pos, 1}
"""
#: What ``VIEW`` reads: every field of ours but the webhook's delivery internals, and RQ's ``timeout``.
VIEW_FIELDS = (*(f for f in FIELDS if f not in webhooks.DELIVERY_FIELDS and f != "webhook_progress_at"), "timeout")
assert VIEW_FIELDS[0] == "state"  # the script reads it first

# KEYS: record, stream, RQ queue, RQ started, finished, failed and canceled registries, tombstone.
# ARGV: job id, tombstone ttl, cancel channel.
# Removes the job from Redis (its record, events, queue entry and RQ registry entries), leaves a tombstone that
# says so, and tells the workers to stop it if it runs. Returns the state it was in ('' if none).
DELETE = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1] .. ':a' .. (cur[2] or ''))
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('SET', KEYS[8], 'deleted', 'EX', ARGV[2])
if cur[1] == 'running' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
return cur[1] or ''
"""


class Scripts:
    """The record's scripts registered on one Redis client (EVALSHA; reloaded by redis-py after a restart)."""

    def __init__(self, redis: Redis) -> None:
        self.start = redis.register_script(START)
        self.event = redis.register_script(EVENT)
        self.finish = redis.register_script(FINISH)
        self.requeue = redis.register_script(REQUEUE)
        self.cancel_running = redis.register_script(CANCEL_RUNNING)
        self.recover = redis.register_script(RECOVER)
        self.view = redis.register_script(VIEW)
        self.delete = redis.register_script(DELETE)


def run(script: Script, keys: Sequence[str], args: Sequence[Any], client: Redis | Pipeline | None = None) -> Any:
    """``script(keys, args)``, typed."""
    return script(keys=list(keys), args=list(args), client=client)


def flat_pairs(fields: Mapping[str, Any]) -> list[str]:
    """A mapping as the flat [field, value, ...] list a script takes (JSON for lists and dicts)."""
    out: list[str] = []
    for name, value in fields.items():
        out.append(name)
        if isinstance(value, dict | list):
            out.append(dumps(value))
        else:
            out.append("" if value is None else str(value))
    return out


def is_terminal(state: str | None) -> bool:
    return state in TERMINAL_STATES
