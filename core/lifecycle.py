"""The job lifecycle over Redis, shared by the API and the workers: each transition of ``core.record`` as one call.

``Lifecycle`` holds a Redis client, the RQ queue (RQ is the transport: its job hash is the record, its list is
the queue, its registries mirror the outcome) and the expiries, and turns each transition into one round trip:

- ``submit``: RQ's public ``enqueue_job`` (on the queue of the job's tenant and priority) in one MULTI pipeline
  with the record's own fields (written by RQ's own save, through ``ServiceJob``), the ``queued`` event, the
  tombstone and, where a worker needs waking (per-tenant queues, or a priority without a tenants file), a
  ``PUBLISH`` of the queue's name on ``svc:submitted``; the queue position comes from the push's reply;
- ``view``: the record and, for a queued job, its queue position under the fair-share policy (``VIEW``);
- ``start`` (FIFO over one tenant's lists), ``claim_fair`` (deficit round robin over the tenants), ``event``,
  ``finish``, ``requeue``, ``cancel``, ``recover``: the scripts of ``core.record``;
- ``reserve``: a place in a tenant's ``max_queued`` counter; ``cache_claim`` and ``cache_answer``: the result cache.

Queues (``core.tenants``): without a tenants file the queue of before (``QUEUE_NAME``) for normal priority, plus
``QUEUE_NAME:high`` and ``QUEUE_NAME:low``; with one, ``QUEUE_NAME:<tenant>:high|normal|low``. RQ's registries
(started, finished, failed, canceled) stay those of ``QUEUE_NAME`` for every job.

Worker liveness: each worker renews its score in ``svc:workers:<queue>`` (``heartbeat``); a worker whose score
is in the past is lost, and ``recover`` hands its jobs back (or fails them when no retry is left).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis import Redis, WatchError
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from core import events, webhooks
from core.protocol import (
    KEY_PREFIX,
    JobState,
    cancel_channel,
    capabilities_key,
    held_key,
    submitted_channel,
    tombstone_key,
    workers_key,
)
from core.record import (
    RECORD_PREFIX,
    RQ_STATUS,
    START_FIELDS,
    VIEW,
    VIEW_FIELDS,
    JobRecord,
    Scripts,
    dumps,
    flat_pairs,
    new_fields,
    record_key,
    run,
    utc_now,
)
from core.tenants import DEFAULT_TENANT, PRIORITIES, Tenants, queue_name


class ServiceJob(Job):
    """RQ's job with the service's record fields in the same hash, written by RQ's own ``save`` (one HSET at
    enqueue). RQ's documented extension point: a custom ``job_class`` on the queue."""

    svc_fields: dict[str, str] | None = None

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = super().to_dict(include_meta=include_meta, include_result=include_result)
        if self.svc_fields:
            out.update(self.svc_fields)
        return out


def service_queue(name: str, redis: Redis) -> Queue:
    """The RQ queue of the service's jobs."""
    return Queue(name, connection=redis, job_class=ServiceJob)


QUEUE_PREFIX = Queue.redis_queue_namespace_prefix  # "rq:queue:": a queue's list is QUEUE_PREFIX + its name


def admitted_before(position: int, own_weight: float, others: Sequence[tuple[int, float]]) -> int:
    """The jobs the fair-share claim admits before a job at index ``position`` of its tenant's lists: ``position``
    plus, for each other tenant with ``(waiting jobs, weight)``, min(waiting, ceil((position + 1) * weight /
    own_weight)). The same rule as the ``VIEW`` script's."""
    ahead = position
    for waiting, weight in others:
        if waiting > 0:
            ahead += min(waiting, math.ceil((position + 1) * weight / own_weight))
    return ahead


def tombstone_parts(text: str | None) -> tuple[str | None, str | None]:
    """A tombstone's value as (``deleted`` or the submission's unix time, the tenant or None)."""
    if text is None:
        return None, None
    what, _, tenant = text.partition(" ")
    return what, tenant or None


@dataclass(frozen=True)
class Started:
    """A job a worker has just started (``Lifecycle.start``)."""

    record: JobRecord

    @property
    def id(self) -> str:
        return self.record.id


class Lifecycle:
    """The transitions of the job records of one queue (see the module docstring)."""

    def __init__(
        self,
        redis: Redis,
        queue: Queue,
        *,
        result_ttl_s: int,
        tombstone_ttl_s: int,
        stream_maxlen: int = events.STREAM_MAXLEN,
        tenants: Tenants | None = None,
    ) -> None:
        self.redis = redis
        self.queue = queue
        self.tenants = tenants if tenants is not None else Tenants.single()
        self.per_tenant = self.tenants.from_file
        self._queues: dict[str, Queue] = {queue.name: queue}
        self.fair_key = f"{KEY_PREFIX}:fair:{queue.name}"
        self.view_args: list[str | float | int] = [QUEUE_PREFIX, queue.name, "1" if self.per_tenant else "0"]
        self.view_args += [len(self.tenants), *(v for t in self.tenants for v in (t.name, t.weight))]
        self.result_ttl_s = result_ttl_s
        self.tombstone_ttl_s = tombstone_ttl_s
        self.maxlen = stream_maxlen
        self.scripts = Scripts(redis)
        self.started_key = StartedJobRegistry(queue=queue).key
        self.registry_key = {
            JobState.succeeded: FinishedJobRegistry(queue=queue).key,
            JobState.failed: FailedJobRegistry(queue=queue).key,
            JobState.canceled: CanceledJobRegistry(queue=queue).key,
        }
        self.workers_key = workers_key(queue.name)

    # -- queues -----------------------------------------------------------------------------------------------
    def queue_for(self, tenant: str, priority: str) -> Queue:
        """The RQ queue of a tenant's jobs of one priority (``core.tenants.queue_name``)."""
        name = queue_name(self.queue.name, tenant, priority, per_tenant=self.per_tenant)
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = service_queue(name, self.redis)
        return found

    def lists_of(self, tenant: str) -> list[str]:
        """The keys of a tenant's three queue lists, high first."""
        return [self.queue_for(tenant, p).key for p in PRIORITIES]

    def queue_keys(self) -> list[str]:
        """Every queue list of the service (each tenant's three)."""
        return [key for t in self.tenants for key in self.lists_of(t.name)]

    def depth(self) -> int:
        """Jobs waiting in every queue (one pipeline of LLENs)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self.queue_keys():
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())

    def counter_key(self, tenant: str) -> str:
        """The tenant's ``max_queued`` counter: its jobs waiting or running (those submitted while it had a limit)."""
        return f"{KEY_PREFIX}:queued:{self.queue.name}:{tenant}"

    # -- API side ---------------------------------------------------------------------------------------------
    def submit(
        self,
        job_id: str,
        *,
        kind: str,
        func: str,
        params: Mapping[str, Any],
        retries: int,
        timeout_s: int,
        submitted: str | None = None,
        pipeline: Pipeline | None = None,
        request_id: str | None = None,
        traceparent: str | None = None,
        tenant: str = DEFAULT_TENANT,
        priority: str = "normal",
        counted: str | None = None,
        cache_key: str | None = None,
        exact_position: bool = True,
        webhook: str | None = None,
        webhook_events: Sequence[str] = (),
    ) -> int:
        """Enqueue a new job (state queued, its ``queued`` event, its tombstone) in one MULTI on the queue of its
        tenant and priority; returns its queue position (0 = next): under the fair-share policy with a tenants file
        (the LLENs it needs ride in the same MULTI; ``exact_position=False`` leaves them out, for a caller that
        will not show the position), else its index in its own list. With ``pipeline``, the commands are added to
        it and -1 is returned (the caller executes it). ``webhook`` and its events go into the record (no extra
        command)."""
        queue = self.queue_for(tenant, priority)
        job = queue.create_job(
            func,
            kwargs={"params": dict(params)},
            job_id=job_id,
            timeout=timeout_s,
            result_ttl=self.result_ttl_s,
            failure_ttl=self.result_ttl_s,
        )
        assert isinstance(job, ServiceJob), "the queue must be made by service_queue()"
        job.svc_fields = new_fields(
            kind=kind,
            func=func,
            params=params,
            retries=retries,
            submitted=submitted,
            request_id=request_id,
            traceparent=traceparent,
            tenant=tenant,
            priority=priority,
            counted=counted,
            cache_key=cache_key,
            webhook=webhook,
            webhook_events=webhook_events,
        )
        pipe = pipeline if pipeline is not None else self.redis.pipeline(transaction=True)
        first = len(pipe.command_stack)
        queue.enqueue_job(job, pipeline=pipe)
        push = next(
            (i for i in range(first, len(pipe.command_stack)) if pipe.command_stack[i][0][0] in ("RPUSH", "LPUSH")),
            None,
        )
        data = dumps({"status": JobState.queued.value})
        pipe.xadd(events.stream_key(job_id), {"event": "status", "data": data}, maxlen=self.maxlen, approximate=True)
        pipe.set(tombstone_key(job_id), f"{int(time.time())} {tenant}", ex=self.tombstone_ttl_s)
        if self.per_tenant or priority != "normal":  # the workers wait on this (without a file: on the list)
            pipe.publish(submitted_channel(), self.queue.name)
        lengths = len(pipe.command_stack)
        others: list[float] = []
        exact = self.per_tenant and exact_position
        if exact:
            own = self.lists_of(tenant)
            for key in own[: PRIORITIES.index(priority)]:
                pipe.llen(key)
            for other in self.tenants:
                if other.name != tenant:
                    others.append(other.weight)
                    for key in self.lists_of(other.name):
                        pipe.llen(key)
        if pipeline is not None:
            return -1
        replies = pipe.execute()
        if push is None:
            return -1
        position = int(replies[push]) - 1
        if not exact:
            return position
        rest = [int(n) for n in replies[lengths - first :]]
        higher = PRIORITIES.index(priority)
        position += sum(rest[:higher])
        waiting = [sum(rest[higher + 3 * i : higher + 3 * i + 3]) for i in range(len(others))]
        return admitted_before(position, self.tenants.get(tenant).weight, list(zip(waiting, others, strict=True)))

    def view(self, job_id: str) -> tuple[JobRecord | None, int | None, str | None]:
        """(the record or None, its queue position when queued, and for a missing record its tombstone: None if
        the id was never known, ``deleted`` if a client deleted the job, else the time it was submitted)."""
        values, position, tombstone = run(
            self.scripts.view, [record_key(job_id), tombstone_key(job_id)], [job_id, *self.view_args, *VIEW_FIELDS]
        )
        return _viewed(job_id, values, position, tombstone)

    def read(self, job_id: str) -> JobRecord | None:
        """The record alone (one HMGET)."""
        values = self.redis.hmget(record_key(job_id), list(VIEW_FIELDS))
        mapping = {name: value for name, value in zip(VIEW_FIELDS, values, strict=True) if value is not None}
        return JobRecord.from_hash(job_id, mapping) if mapping else None

    def cancel(self, record: JobRecord) -> str:
        """Cancel a job: a queued one at once (its ``done`` event pushed here), a running one by flagging it and
        telling the workers (it stops within one step). Returns the state it was found in."""
        if record.state is JobState.queued:
            now = utc_now()
            canceled = replace(record, state=JobState.canceled, finished=now, cancel=True)
            if self.finish(canceled, held=held_key("-"), guard="queued"):
                return JobState.queued.value
        state = run(self.scripts.cancel_running, [record_key(record.id)], [record.id, cancel_channel()])
        return state.decode() if isinstance(state, bytes) else str(state)

    def delete(self, job_id: str) -> str:
        """Remove a job from Redis (record, events, queue, RQ's registries; a tombstone says it was deleted) and
        stop it if it runs; returns the state it was in. Its stored files are the caller's to delete first."""
        state = run(
            self.scripts.delete,
            [
                record_key(job_id),
                events.stream_key(job_id),
                self.started_key,
                *(self.registry_key[s] for s in (JobState.succeeded, JobState.failed, JobState.canceled)),
                tombstone_key(job_id),
            ],
            [job_id, self.tombstone_ttl_s, cancel_channel(), QUEUE_PREFIX],
        )
        return _str(state)

    def reserve(self, tenant: str, limit: int) -> str | None:
        """A place for one more job of ``tenant`` in its ``max_queued`` counter: the counter's key (to record with
        the job, whose end gives the place back), or None when it already has ``limit`` jobs waiting or running."""
        key = self.counter_key(tenant)
        return key if int(run(self.scripts.reserve, [key], [limit])) else None

    def release(self, counted: str) -> None:
        """Give a place back (a submission that failed after ``reserve``)."""
        self.redis.decr(counted)

    # -- the result cache ------------------------------------------------------------------------------------------
    def cache_claim(self, cache_key: str, job_id: str, ttl_s: int) -> str | None:
        """One command (``SET NX GET``): register ``job_id`` under ``cache_key`` when the key is free (None: a
        miss, and this job is now the entry), else return the job the entry names (a hit if that job succeeded and
        its record still exists: ``cache_answer``)."""
        found = self.redis.set(cache_key, job_id, nx=True, get=True, ex=ttl_s)
        return None if found is None else _str(found)

    def cache_answer(self, record: JobRecord, source: str, cache_key: str, ttl_s: int) -> JobRecord | bool:
        """Answer ``record`` (a new job, not enqueued) from ``source``, the job its cache entry names: if the source
        succeeded and its record exists, write ``record`` as a succeeded job showing the source's files, expiring
        with the source, with its ``done`` event pushed (one transaction, watching the source's record), and return
        it. Else a miss: False when a source still queued or running keeps the entry, True when a failed or vanished
        one handed the entry to ``record``."""
        source_key = record_key(source)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(source_key)  # type: ignore[no-untyped-call]
                state, files, main = pipe.hmget(source_key, ["state", "files", "main"])
                ttl_ms = int(pipe.pttl(source_key))
                if state is None or _str(state) != JobState.succeeded.value or ttl_ms <= 0:
                    if state is None or _str(state) in (JobState.failed.value, JobState.canceled.value):
                        pipe.multi()
                        pipe.set(cache_key, record.id, ex=ttl_s)
                        pipe.execute()
                        return True
                    return False
                now = utc_now()
                answered = replace(
                    record,
                    state=JobState.succeeded,
                    started=now,
                    finished=now,
                    files=[_str(f) for f in _json_list(files)],
                    main=_str(main) if main else None,
                    source=source,
                    cached=True,
                    timings={"queued_s": 0.0, "run_s": 0.0},
                )
                fields = new_fields(
                    kind=record.kind,
                    func=record.func,
                    params=record.params,
                    retries=0,
                    submitted=record.submitted,
                    request_id=record.request_id,
                    traceparent=record.traceparent,
                    tenant=record.tenant,
                    priority=record.priority,
                )
                fields.update(
                    {
                        "state": JobState.succeeded.value,
                        "status": RQ_STATUS[JobState.succeeded.value],
                        "origin": self.queue.name,
                        "created_at": _rq_time(),
                        "ended_at": _rq_time(),
                        "started": now,
                        "finished": now,
                        "attempt": "0",
                        "files": dumps(answered.files),
                        "main": answered.main or "",
                        "source": source,
                        "cached": "1",
                        "timings": dumps(answered.timings),
                    }
                )
                stream = events.stream_key(record.id)
                body = dumps(answered.body())
                pipe.multi()
                pipe.hset(record_key(record.id), mapping=dict[Any, Any](fields))
                pipe.pexpire(record_key(record.id), ttl_ms)
                pipe.xadd(stream, {"event": "done", "data": body}, maxlen=self.maxlen, approximate=True)
                pipe.pexpire(stream, ttl_ms)
                pipe.set(tombstone_key(record.id), f"{int(time.time())} {record.tenant}", ex=self.tombstone_ttl_s)
                pipe.publish(events.CHANNEL, f"{record.id} - done {body}")
                pipe.execute()
            except WatchError:  # the source changed meanwhile (deleted, say): run the job instead
                return False
        return answered

    # -- worker side -------------------------------------------------------------------------------------------
    def claim(self, worker: str, timeout_s: float, client: Redis | None = None) -> str | None:
        """Block up to ``timeout_s`` for the next queued job id of the normal list of a deployment without tenants
        file (``QUEUE_NAME``), moved into the worker's held list (so that a worker that dies right after still has it
        recovered); None when the queue stayed empty (or the wait was ended by ``CLIENT UNBLOCK``). ``client``: the
        connection to block on (default: this lifecycle's client)."""
        value = (client or self.redis).blmove(
            self.queue.key, held_key(worker), max(1, round(timeout_s)), "LEFT", "RIGHT"
        )
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def start(self, worker: str, first: str | None, more: int) -> tuple[list[Started], list[tuple[str, str]]]:
        """Start ``first`` (already held) and up to ``more`` further jobs, in one round trip: from the lists of the
        one tenant of a deployment without a tenants file (high, normal, low), or by fair share across the tenants
        of a tenants file (``claim_fair``). Returns (the started jobs, [(id, state)] of the ids not startable)."""
        if self.per_tenant:
            mode: list[str | float] = ["fair"]
            for tenant in self.tenants:
                mode += [tenant.name, tenant.weight, *self.lists_of(tenant.name)]
        else:
            mode = ["fifo", *self.lists_of(DEFAULT_TENANT)]
        now_iso = utc_now()
        replies = run(
            self.scripts.start,
            [held_key(worker), self.started_key, self.fair_key, webhooks.SCHEDULE_KEY],
            [
                first or "",
                more,
                worker,
                now_iso,
                _rq_time(),
                time.time() + 10 * 365 * 24 * 3600,  # no RQ clean-up ever judges it: the service's recovery does
                self.maxlen,
                events.CHANNEL,
                RECORD_PREFIX,
                events.STREAM_PREFIX,
                time.time(),
                *mode,
            ],
        )
        started, skipped = [], []
        for entry in replies:
            job_id = _str(entry[0])
            if int(entry[1]) == 1:
                values = dict(zip(START_FIELDS, entry[2], strict=True))
                record = JobRecord.from_hash(job_id, {k: v for k, v in values.items() if v is not None})
                if record is not None:
                    record.worker = worker
                    record.started = now_iso
                    started.append(Started(record))
            else:
                skipped.append((job_id, _str(entry[2])))
        return started, skipped

    def claim_fair(self, worker: str, room: int) -> tuple[list[Started], list[tuple[str, str]]]:
        """Claim and start up to ``room`` jobs by fair share across the tenants (``start`` with no first job)."""
        return self.start(worker, None, room)

    def event(
        self, job_id: str, attempt: int, event: str, data: Mapping[str, Any], *, progress: Mapping[str, Any] | None
    ) -> str | None:
        """Append a ``progress`` or ``preview`` event of a running attempt (and record the progress)."""
        result = run(
            self.scripts.event,
            [record_key(job_id), events.stream_key(job_id), webhooks.SCHEDULE_KEY],
            [
                job_id,
                event,
                dumps(dict(data)),
                attempt,
                self.maxlen,
                events.CHANNEL,
                dumps(progress) if progress else "",
                time.time(),
                webhooks.PROGRESS_INTERVAL_S,
            ],
        )
        return _str(result) if result else None

    def finish(
        self,
        record: JobRecord,
        *,
        held: str,
        guard: str,
        progress_event: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> bool | None:
        """The terminal transition: ``record``, already in its terminal state, is written (its end fields and
        ``extra``), its ``done`` event (``record.body()``) pushed, the record and events set to expire in
        RESULT_TTL_S, and RQ's status and registries updated; a webhook that wants ``completed`` gets that delivery
        queued with the same body. False when ``guard`` refused (``core.record.FINISH``), None when the record is
        gone (the job was deleted meanwhile)."""
        state = record.state
        assert state.terminal
        if record.wants_completed:  # the script sets it too (from the record): the body shows it
            record = replace(record, webhook_state="pending")
        body = record.body()
        fields = {
            "finished": record.finished or utc_now(),
            "ended_at": _rq_time(),
            "progress": record.progress,
            "files": record.files,
            "main": record.main,
            "error_code": record.error_code,
            "error": record.error,
            "cancel": "1" if record.cancel else "",
            "timings": record.timings,
            **(extra or {}),
        }
        ok = run(
            self.scripts.finish,
            [
                record_key(record.id),
                events.stream_key(record.id),
                held,
                self.started_key,
                self.registry_key[state],
                webhooks.SCHEDULE_KEY,
            ],
            [
                record.id,
                state.value,
                RQ_STATUS[state.value],
                self.result_ttl_s,
                time.time() + self.result_ttl_s,
                self.maxlen,
                events.CHANNEL,
                dumps(dict(progress_event)) if progress_event else "",
                dumps(body),
                guard,
                QUEUE_PREFIX,
                time.time(),
                *flat_pairs(fields),
            ],
        )
        return None if int(ok) < 0 else bool(ok)

    def requeue(self, job_id: str, worker: str, *, consume_retry: bool) -> int:
        """Hand a running job of ``worker`` back to the head of the queue (1), or not: 0 if it no longer runs
        there, -1 if ``consume_retry`` and it has no retry left."""
        return int(
            run(
                self.scripts.requeue,
                [record_key(job_id), events.stream_key(job_id), held_key(worker), self.started_key],
                [job_id, worker, "1" if consume_retry else "0", self.maxlen, events.CHANNEL, QUEUE_PREFIX],
            )
        )

    def heartbeat(self, worker: str, ttl_s: float, info: Mapping[str, Any] | None = None) -> None:
        """Renew the worker's liveness for ``ttl_s`` seconds (and its published state)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.workers_key, {worker: time.time() + ttl_s})
            if info is not None:
                pipe.hset(capabilities_key(), worker, dumps(dict(info)))
            pipe.execute()

    def leave(self, worker: str) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.workers_key, worker)
            pipe.hdel(capabilities_key(), worker)
            pipe.execute()

    def live_workers(self) -> list[str]:
        return [_str(w) for w in self.redis.zrangebyscore(self.workers_key, time.time(), "+inf")]

    def lost_workers(self) -> list[str]:
        return [_str(w) for w in self.redis.zrangebyscore(self.workers_key, "-inf", time.time())]

    def recover(self, worker: str) -> list[str]:
        """A lost worker: its claimed jobs back in the queue; returns the ids of the jobs it was running (each
        to be handed back with ``requeue(consume_retry=True)`` or failed). [] if it turned out alive."""
        ids = run(
            self.scripts.recover,
            [self.workers_key, held_key(worker)],
            [worker, time.time(), RECORD_PREFIX, QUEUE_PREFIX],
        )
        if not ids:
            return []
        self.redis.hdel(capabilities_key(), worker)
        return [_str(i) for i in ids]


class AsyncRecords:
    """The reads of the API's hot paths (a poll, a download) on an asyncio Redis client: one round trip each, on
    the event loop, without a thread hop."""

    def __init__(self, aredis: AsyncRedis, lifecycle: Lifecycle) -> None:
        self.aredis = aredis
        self.view_args = list(lifecycle.view_args)
        self._view = aredis.register_script(VIEW)

    async def view(self, job_id: str) -> tuple[JobRecord | None, int | None, str | None]:
        """As ``Lifecycle.view``."""
        values, position, tombstone = await self._view(
            keys=[record_key(job_id), tombstone_key(job_id)], args=[job_id, *self.view_args, *VIEW_FIELDS]
        )
        return _viewed(job_id, values, position, tombstone)

    async def read(self, job_id: str) -> JobRecord | None:
        """As ``Lifecycle.read``."""
        values = await self.aredis.hmget(record_key(job_id), list(VIEW_FIELDS))
        mapping = {name: value for name, value in zip(VIEW_FIELDS, values, strict=True) if value is not None}
        return JobRecord.from_hash(job_id, mapping) if mapping else None


def _viewed(
    job_id: str, values: list[Any], position: Any, tombstone: Any
) -> tuple[JobRecord | None, int | None, str | None]:
    mapping = {name: value for name, value in zip(VIEW_FIELDS, values, strict=True) if value is not None}
    record = JobRecord.from_hash(job_id, mapping) if mapping else None
    known = None if record is not None or tombstone in (None, False) else _str(tombstone)
    return record, (int(position) if position is not None and position is not False else None), known


def _json_list(value: Any) -> list[Any]:
    import json

    try:
        out = json.loads(_str(value)) if value else []
    except ValueError:
        return []
    return out if isinstance(out, list) else []


def _rq_time() -> str:
    """Now in RQ's own time format (its ``started_at`` / ``ended_at`` fields)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
