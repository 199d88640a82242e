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
| ``tenant`` | the tenant that submitted it (``default`` without a tenants file); only that tenant's keys see it |
| ``priority`` | ``high`` or ``low`` (absent: ``normal``): its place among its tenant's queued jobs |
| ``counted`` | the tenant's ``max_queued`` counter it holds a place in (only for a tenant with a limit): the terminal transition and a delete give it back |
| ``cache_key`` | the result cache entry it registered (a seeded job): a failure, cancel or delete removes the entry if it is still this job's |
| ``source``, ``cached`` | of a job answered from the result cache: the job whose files it shows, and ``1`` |

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

RQ's ``origin`` (the name of the RQ queue it was enqueued on: the tenant's queue of its priority) tells every script
which list the job waits in (``queue_prefix`` + origin).

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
    "tenant",
    "priority",
    "counted",
    "cache_key",
    "source",
    "cached",
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
    tenant: str = "default"
    priority: str = "normal"
    counted: str | None = None
    cache_key: str | None = None
    source: str | None = None  # a cached job: the job whose files it shows
    cached: bool = False

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
            tenant=values.get("tenant") or "default",
            priority=values.get("priority") or "normal",
            counted=values.get("counted") or None,
            cache_key=values.get("cache_key") or None,
            source=values.get("source") or None,
            cached=values.get("cached") == "1",
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

    @property
    def files_of(self) -> str:
        """The job whose stored objects hold this job's files: itself, or the source of a cached job."""
        return self.source or self.id

    def body(self, position: int | None = None, eta_s: float | None = None) -> dict[str, Any]:
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
            "eta_s": eta_s if state is JobState.queued else None,
            "priority": self.priority,
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
            "cached": self.cached,
            "source": self.source,
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
    tenant: str = "default",
    priority: str = "normal",
    counted: str | None = None,
    cache_key: str | None = None,
    webhook: str | None = None,
    webhook_events: Sequence[str] = (),
) -> dict[str, str]:
    """The service's fields of a new record (state queued), written with RQ's own at enqueue (in the one HSET: the
    optional ones cost no command)."""
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
    fields["tenant"] = tenant
    if priority != "normal":
        fields["priority"] = priority
    if counted:
        fields["counted"] = counted
    if cache_key:
        fields["cache_key"] = cache_key
    return fields


# ---- scripts ----------------------------------------------------------------------------------------------------

_TERMINAL_LUA = (
    "local function terminal(s) return s == 'succeeded' or s == 'failed' or s == 'canceled' end\n" + webhooks.QUEUE_LUA
)

# KEYS: held list of the worker, RQ started registry, fair-share state (hash; a claim by fair share only), webhook
#       schedule.
# ARGV: job id already moved into the held list ('' = none), how many more to take, worker name, now (ISO), now (RQ's
#       format), started-registry score, stream maxlen, events channel, record prefix, stream prefix, now (unix
#       seconds), then the mode:
#       'fifo' followed by the lists to take from in order (one tenant: its high, normal and low lists), or 'fair'
#       followed by one group per tenant: name, weight, its high, normal and low lists.
# Returns one entry per job taken: {id, 1, HMGET of START_FIELDS after the start} for a started job, or
# {id, 0, state} for one that is not startable (canceled while being claimed, deleted, not the service's).
# A job whose webhook wants ``start`` gets that delivery queued (once per attempt).
#
# 'fair' is deficit round robin over the tenants with waiting jobs (quantum: weight jobs a turn), shared by every
# worker through the state hash: 'turn' (whose turn it is), 'started' ('1': that turn already got its quantum) and
# 'd:<tenant>' (deficits). A claim with less room than a turn's deficit leaves the turn to go on at the next claim;
# a tenant whose lists are empty loses its deficit. Inside a tenant, LMPOP takes from its first non-empty list
# (high, normal, low), FIFO.
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
    "tenant",
    "webhook",
    "webhook_events",
    "priority",  # the done event's body shows it (a worker's record is made of these fields only)
)
START = (
    _TERMINAL_LUA
    + """
local out = {}
local function start(id)
  local rk = ARGV[9] .. id
  local f = redis.call('HMGET', rk, @START_FIELDS@)
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
  redis.call('ZADD', KEYS[2], ARGV[6], id .. ':a' .. attempt)
  if wants(f[13], f[14], 'start') then redis.call('ZADD', KEYS[4], ARGV[11], id .. ':start') end
  f[1], f[2] = 'running', tostring(attempt)
  out[#out + 1] = {id, 1, f}
end
local function fifo(room)
  local args = {#ARGV - 12}
  for i = 13, #ARGV do args[#args + 1] = ARGV[i] end
  args[#args + 1] = 'LEFT'
  args[#args + 1] = 'COUNT'
  local taken = {}
  while #taken < room do
    args[#ARGV - 8] = room - #taken
    local more = redis.call('LMPOP', unpack(args))
    if not more then break end
    for _, id in ipairs(more[2]) do taken[#taken + 1] = id end
  end
  return taken
end
local function fair(room)
  local names, weights, lists, at = {}, {}, {}, {}
  for i = 13, #ARGV, 5 do
    local k = #names + 1
    names[k], weights[k] = ARGV[i], tonumber(ARGV[i + 1])
    lists[k] = {ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]}
    at[ARGV[i]] = k
  end
  local n = #names
  local state = redis.call('HGETALL', KEYS[3])
  local saved = {}
  for i = 1, #state, 2 do saved[state[i]] = state[i + 1] end
  local d = {}
  for k = 1, n do d[k] = tonumber(saved['d:' .. names[k]] or '0') end
  local t = at[saved['turn'] or ''] or 1
  local started = saved['started'] == '1' and at[saved['turn'] or ''] ~= nil
  local taken, empty, nempty = {}, {}, 0
  for _ = 1, 100000 do
    if #taken >= room or nempty >= n then break end
    if not empty[t] then
      if not started then d[t] = d[t] + weights[t]; started = true end
      while d[t] >= 1 and #taken < room do
        local got = redis.call('LMPOP', 3, lists[t][1], lists[t][2], lists[t][3], 'LEFT', 'COUNT',
          math.min(math.floor(d[t]), room - #taken))
        if not got then
          empty[t] = true
          nempty = nempty + 1
          d[t] = 0
          break
        end
        for _, id in ipairs(got[2]) do taken[#taken + 1] = id end
        d[t] = d[t] - #got[2]
      end
      if #taken >= room and not empty[t] and d[t] >= 1 then break end
    end
    t = t % n + 1
    started = false
  end
  local fields = {'turn', names[t], 'started', started and '1' or '0'}
  for k = 1, n do
    fields[#fields + 1] = 'd:' .. names[k]
    fields[#fields + 1] = tostring(d[k])
  end
  redis.call('HSET', KEYS[3], unpack(fields))
  return taken
end
if ARGV[1] ~= '' then start(ARGV[1]) end
local room = tonumber(ARGV[2])
if room > 0 then
  local ids
  if ARGV[12] == 'fair' then ids = fair(room) else ids = fifo(room) end
  if #ids > 0 then
    redis.call('RPUSH', KEYS[1], unpack(ids))
    for _, id in ipairs(ids) do start(id) end
  end
end
return out
"""
).replace("@START_FIELDS@", ", ".join(f"'{name}'" for name in START_FIELDS))  # f[13], f[14]: webhook, its events

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

# KEYS: record, stream, held list of the worker, RQ started registry, RQ registry of the outcome, webhook schedule.
# ARGV: job id, state, RQ status, ttl, registry score, stream maxlen, events channel, progress data ('' = none),
#       done data, guard, queue prefix, now (unix seconds), then field/value pairs. Guard: '' = any job not yet terminal; 'queued' = only
#       a queued one; 'attempt:<n>' = only while attempt n runs or waits; 'worker:<name>' = only while <name> runs it.
# A queued job leaves its queue (queue prefix .. its RQ ``origin``); a job that holds a place in its tenant's
# ``max_queued`` counter gives it back; one that did not succeed drops its result cache entry if it is still its own.
# Returns 1, 0 if the guard refused (another transition came first), or -1 if the record is gone (the job was
# deleted meanwhile: the caller removes what it stored for it). A job whose webhook wants ``completed`` gets that
# delivery queued (one ZADD) with the done data as its body (``webhook_body``, in the same HSET).
FINISH = (
    _TERMINAL_LUA
    + """
local cur = redis.call('HMGET', KEYS[1], 'state', 'worker', 'attempt', 'origin', 'counted', 'cache_key', 'webhook',
  'webhook_events')
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
if st == 'queued' and cur[4] then redis.call('LREM', ARGV[11] .. cur[4], 0, ARGV[1]) end
local hook = wants(cur[7], cur[8], 'completed')
local fields = {}
for i = 13, #ARGV do fields[#fields + 1] = ARGV[i] end
if hook then
  for _, v in ipairs({'webhook_state', 'pending', 'webhook_body', ARGV[9], 'webhook_first', ARGV[12]}) do
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
  redis.call('ZREM', KEYS[4], ARGV[1] .. ':a' .. (cur[3] or ''))
end
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
if cur[5] then redis.call('DECR', cur[5]) end
if cur[6] and ARGV[2] ~= 'succeeded' and redis.call('GET', cur[6]) == ARGV[1] then redis.call('DEL', cur[6]) end
if hook then redis.call('ZADD', KEYS[6], ARGV[12], ARGV[1] .. ':completed') end
return 1
"""
)

# KEYS: record, stream, held list of the worker, RQ started registry.
# ARGV: job id, worker name (guard: the job must be running on it), consume a retry ('1' or '0'), stream maxlen,
#       events channel, queue prefix.
# Returns 1 when the job is back at the head of its queue, 0 if the guard refused, -1 if no retry was left.
REQUEUE = """
local cur = redis.call('HMGET', KEYS[1], 'state', 'worker', 'retries', 'attempt', 'origin')
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
redis.call('ZREM', KEYS[4], ARGV[1] .. ':a' .. (cur[4] or ''))
redis.call('LPUSH', ARGV[6] .. cur[5], ARGV[1])
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

# KEYS: live workers (sorted set), held list of the worker.
# ARGV: worker name, now (unix seconds), record prefix, queue prefix.
# A worker whose heartbeat expired: its claimed-but-not-started jobs go back to the head of their queues, and the
# ids of the jobs it was running are returned (the caller hands each back or fails it); false if it is alive.
RECOVER = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
local running = {}
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #ids, 1, -1 do
  local id = ids[i]
  local f = redis.call('HMGET', ARGV[3] .. id, 'state', 'origin')
  if f[1] == 'running' then
    running[#running + 1] = id
  else
    redis.call('LREM', KEYS[2], 0, id)
    if f[1] == 'queued' and f[2] then redis.call('LPUSH', ARGV[4] .. f[2], id) end
  end
end
return running
"""

# KEYS: record, tombstone.
# ARGV: job id, queue prefix, base queue name, '1' with a tenants file (per-tenant queues) else '0', the number of
#       tenants N, N pairs (tenant, weight), then the fields to read (``VIEW_FIELDS``: state, tenant, priority first).
# Returns {the fields' values (HMGET), its queue position or false, the tombstone's value (false: none) or 1}.
# The queue position of a queued job is how many jobs the fair-share claim admits before it: p (its index in its
# tenant's lists, high then normal then low) plus, for every other tenant t with waiting jobs,
# min(len_t, ceil((p + 1) * w_t / w_own)). False for a job claimed by a worker and not yet started.
VIEW = """
local first = 6 + 2 * tonumber(ARGV[5])
local names = {}
for i = first, #ARGV do names[#names + 1] = ARGV[i] end
local values = redis.call('HMGET', KEYS[1], unpack(names))
local st = values[1]
if not st then return {values, false, redis.call('GET', KEYS[2])} end
if st ~= 'queued' then return {values, false, 1} end
local function lists(tenant)
  local q = ARGV[2] .. ARGV[3]
  if ARGV[4] == '1' then return {q .. ':' .. tenant .. ':high', q .. ':' .. tenant .. ':normal', q .. ':' .. tenant .. ':low'} end
  return {q .. ':high', q, q .. ':low'}
end
local own, prio = values[2] or 'default', values[3] or 'normal'
local rank = ({high = 1, normal = 2, low = 3})[prio] or 2
local mine = lists(own)
local p = 0
for i = 1, rank - 1 do p = p + redis.call('LLEN', mine[i]) end
local at = redis.call('LPOS', mine[rank], ARGV[1])
if not at then return {values, false, 1} end
p = p + at
local ahead = p
local weight = {}
for i = 6, first - 1, 2 do weight[ARGV[i]] = tonumber(ARGV[i + 1]) end
local wown = weight[own] or 1
for i = 6, first - 1, 2 do
  local t = ARGV[i]
  if t ~= own then
    local len = 0
    for _, k in ipairs(lists(t)) do len = len + redis.call('LLEN', k) end
    if len > 0 then ahead = ahead + math.min(len, math.ceil((p + 1) * weight[t] / wown)) end
  end
end
return {values, ahead, 1}
"""
#: What ``VIEW`` reads: every field of ours but the webhook's delivery internals (state, tenant and priority first:
#: the script reads them), and RQ's ``timeout``.
VIEW_FIELDS = (
    "state",
    "tenant",
    "priority",
    *(f for f in FIELDS if f not in ("state", "tenant", "priority", *webhooks.DELIVERY_FIELDS, "webhook_progress_at")),
    "timeout",
)

# KEYS: record, stream, RQ started, finished, failed and canceled registries, tombstone.
# ARGV: job id, tombstone ttl, cancel channel, queue prefix.
# Removes the job from Redis (its record, events, queue entry and RQ registry entries), leaves a tombstone that
# says so (with the tenant: another tenant's key still gets 404), gives back its place in its tenant's ``max_queued``
# counter if it had not ended, drops its result cache entry if it is its own, and tells the workers to stop it if it
# runs. Returns the state it was in ('' if none).
DELETE = (
    _TERMINAL_LUA
    + """
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'origin', 'counted', 'cache_key', 'tenant')
if cur[3] then redis.call('LREM', ARGV[4] .. cur[3], 0, ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1] .. ':a' .. (cur[2] or ''))
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('SET', KEYS[7], 'deleted ' .. (cur[6] or 'default'), 'EX', ARGV[2])
if cur[1] == 'running' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
if cur[4] and cur[1] and not terminal(cur[1]) then redis.call('DECR', cur[4]) end
if cur[5] and redis.call('GET', cur[5]) == ARGV[1] then redis.call('DEL', cur[5]) end
return cur[1] or ''
"""
)

# KEYS: the tenant's counter. ARGV: its max_queued.
# Takes a place for one more job of the tenant (waiting or running); 0 when it already has max_queued of them.
RESERVE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return n
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
        self.reserve = redis.register_script(RESERVE)


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
