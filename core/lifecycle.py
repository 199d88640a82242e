"""The job lifecycle over Redis, shared by the API and the workers: each transition of ``core.record`` as one call.

``Lifecycle`` holds a Redis client, the RQ queue (RQ is the transport: its job hash is the record, its list is
the queue, its registries mirror the outcome) and the expiries, and turns each transition into one round trip:

- ``submit``: RQ's public ``enqueue_job`` in one MULTI pipeline with the record's own fields (written by RQ's
  own save, through ``ServiceJob``), the ``queued`` event and the tombstone; the queue position is the push's
  reply;
- ``view``: the record and, for a queued job, its queue position (``VIEW``);
- ``start``, ``event``, ``finish``, ``requeue``, ``cancel``, ``recover``: the scripts of ``core.record``.

Worker liveness: each worker renews its score in ``svc:workers:<queue>`` (``heartbeat``); a worker whose score
is in the past is lost, and ``recover`` hands its jobs back (or fails them when no retry is left).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from core import events, webhooks
from core.protocol import JobState, cancel_channel, capabilities_key, held_key, tombstone_key, workers_key
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
    ) -> None:
        self.redis = redis
        self.queue = queue
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
        webhook: str | None = None,
        webhook_events: Sequence[str] = (),
    ) -> int:
        """Enqueue a new job (state queued, its ``queued`` event, its tombstone) in one MULTI; returns its queue
        position (0 = next). With ``pipeline``, the commands are added to it and -1 is returned (the caller
        executes it). ``webhook`` and its events go into the record (no extra command)."""
        job = self.queue.create_job(
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
            webhook=webhook,
            webhook_events=webhook_events,
        )
        pipe = pipeline if pipeline is not None else self.redis.pipeline(transaction=True)
        first = len(pipe.command_stack)
        self.queue.enqueue_job(job, pipeline=pipe)
        push = next(
            (i for i in range(first, len(pipe.command_stack)) if pipe.command_stack[i][0][0] in ("RPUSH", "LPUSH")),
            None,
        )
        data = dumps({"status": JobState.queued.value})
        pipe.xadd(events.stream_key(job_id), {"event": "status", "data": data}, maxlen=self.maxlen, approximate=True)
        pipe.set(tombstone_key(job_id), str(int(time.time())), ex=self.tombstone_ttl_s)
        if pipeline is not None:
            return -1
        replies = pipe.execute()
        return int(replies[push]) - 1 if push is not None else -1

    def view(self, job_id: str) -> tuple[JobRecord | None, int | None, str | None]:
        """(the record or None, its queue position when queued, and for a missing record its tombstone: None if
        the id was never known, ``deleted`` if a client deleted the job, else the time it was submitted)."""
        values, position, tombstone = run(
            self.scripts.view, [record_key(job_id), self.queue.key, tombstone_key(job_id)], [job_id, *VIEW_FIELDS]
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
                self.queue.key,
                self.started_key,
                *(self.registry_key[s] for s in (JobState.succeeded, JobState.failed, JobState.canceled)),
                tombstone_key(job_id),
            ],
            [job_id, self.tombstone_ttl_s, cancel_channel()],
        )
        return _str(state)

    # -- worker side -------------------------------------------------------------------------------------------
    def claim(self, worker: str, timeout_s: float) -> str | None:
        """Block up to ``timeout_s`` for the next queued job id, moved into the worker's held list (so that a
        worker that dies right after still has it recovered); None when the queue stayed empty."""
        value = self.redis.blmove(self.queue.key, held_key(worker), max(1, round(timeout_s)), "LEFT", "RIGHT")
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def start(self, worker: str, first: str | None, more: int) -> tuple[list[Started], list[tuple[str, str]]]:
        """Start ``first`` (already held) and up to ``more`` further jobs from the queue, in one round trip.
        Returns (the started jobs, [(id, state)] of the ids that were not startable)."""
        now_iso = utc_now()
        replies = run(
            self.scripts.start,
            [held_key(worker), self.queue.key, self.started_key, webhooks.SCHEDULE_KEY],
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
                self.queue.key,
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
                [record_key(job_id), events.stream_key(job_id), held_key(worker), self.queue.key, self.started_key],
                [job_id, worker, "1" if consume_retry else "0", self.maxlen, events.CHANNEL],
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
            [self.workers_key, held_key(worker), self.queue.key],
            [worker, time.time(), RECORD_PREFIX],
        )
        if not ids:
            return []
        self.redis.hdel(capabilities_key(), worker)
        return [_str(i) for i in ids]


class AsyncRecords:
    """The reads of the API's hot paths (a poll, a download) on an asyncio Redis client: one round trip each, on
    the event loop, without a thread hop."""

    def __init__(self, aredis: AsyncRedis, queue: Queue) -> None:
        self.aredis = aredis
        self.queue_key = queue.key
        self._view = aredis.register_script(VIEW)

    async def view(self, job_id: str) -> tuple[JobRecord | None, int | None, str | None]:
        """As ``Lifecycle.view``."""
        values, position, tombstone = await self._view(
            keys=[record_key(job_id), self.queue_key, tombstone_key(job_id)], args=[job_id, *VIEW_FIELDS]
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


def _rq_time() -> str:
    """Now in RQ's own time format (its ``started_at`` / ``ended_at`` fields)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
