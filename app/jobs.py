"""Job lifecycle on the API side: submit (with idempotency and back-pressure), view, cancel.

The API enqueues each operation's job function by its dotted name (`core.operations.Operation.job`),
never importing it, with one argument: the validated parameters as JSON. Uploads are written to the
job's storage folder (``inputs/<name>``) before the job is enqueued.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from app.problems import Problem
from app.schemas import JobBody, OperationState, Progress
from core import events, storage
from core.operations import IF_UPSCALE, OPERATIONS, Operation, OperationParams
from core.protocol import (
    JobState,
    cancel_channel,
    cancel_key,
    capabilities_key,
    idempotency_key,
    tombstone_key,
)
from core.settings import Settings

_RQ_TO_STATE = {
    JobStatus.CREATED: JobState.queued,
    JobStatus.QUEUED: JobState.queued,
    JobStatus.DEFERRED: JobState.queued,
    JobStatus.SCHEDULED: JobState.queued,
    JobStatus.READY_TO_ENQUEUE: JobState.queued,
    JobStatus.RATE_LIMITED: JobState.queued,
    JobStatus.STARTED: JobState.running,
    JobStatus.FINISHED: JobState.succeeded,
    JobStatus.FAILED: JobState.failed,
    JobStatus.STOPPED: JobState.canceled,
    JobStatus.CANCELED: JobState.canceled,
}


def new_job_id() -> str:
    """128 random bits as 32 hex characters: unguessable, and safe as a folder name."""
    return secrets.token_hex(16)


def _fingerprint(kind: str, params: dict[str, Any], inputs: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "params": params}, sort_keys=True, default=str).encode())
    for name in sorted(inputs):
        h.update(name.encode() + b"\0" + hashlib.sha256(inputs[name]).digest())
    return h.hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def operation_states(redis: Redis, queue: Queue) -> tuple[int, dict[str, OperationState]]:
    """(live workers, each operation and the stage-II upscale with whether a live worker can serve it and why not).

    A worker publishes what it serves and, for the rest, the reason (a model that failed to load, DeepFloyd
    disabled, no CUDA device for IF_ENABLED=auto); workers that stopped heart-beating are not counted.
    """
    from rq import Worker

    live = {w.name for w in Worker.all(queue=queue)}
    infos = [json.loads(_text(raw)) for name, raw in redis.hgetall(capabilities_key()).items() if _text(name) in live]
    states = {}
    for name in [*OPERATIONS, IF_UPSCALE]:
        servers = sum(name in info.get("operations", []) for info in infos)
        reasons = sorted({str(info["unavailable"][name]) for info in infos if name in info.get("unavailable", {})})
        if servers:
            states[name] = OperationState(available=True, workers=servers)
        else:
            reason = "; ".join(reasons) or ("no live worker" if not infos else "no live worker serves it")
            states[name] = OperationState(available=False, workers=0, reason=reason)
    return len(live), states


STATES_TTL_S = 1.0
_states_cache: dict[tuple[str, str], tuple[float, int, dict[str, OperationState]]] = {}
_states_lock = threading.Lock()


def _recent_states(redis: Redis, queue: Queue) -> tuple[int, dict[str, OperationState]]:
    """``operation_states`` at most ``STATES_TTL_S`` old: a submit costs no worker scan while traffic is high."""
    key = (repr(redis.connection_pool), queue.name)
    now = time.monotonic()
    with _states_lock:
        cached = _states_cache.get(key)
    if cached is not None and now - cached[0] < STATES_TTL_S:
        return cached[1], cached[2]
    live, states = operation_states(redis, queue)
    with _states_lock:
        _states_cache[key] = (now, live, states)
    return live, states


def ensure_servable(redis: Redis, queue: Queue, kind: str) -> None:
    """503 when live workers exist but none of them can serve `kind` (its model failed to load, or is not
    enabled). With no live worker at all the job is accepted and waits in the queue, so a restarting worker
    loses nothing. Uses a view of the workers at most a second old."""
    live, states = _recent_states(redis, queue)
    if live and not states[kind].available:
        raise Problem(
            503,
            "operation-unavailable",
            f"no live worker can serve {kind}: {states[kind].reason}",
            headers={"Retry-After": "30"},
        )


def pick_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one that is recorded with the job."""
    return seed if seed is not None else secrets.randbelow(2**31)


def submit(
    redis: Redis,
    queue: Queue,
    settings: Settings,
    op: Operation,
    params: OperationParams,
    *,
    uploads: dict[str, bytes] | None = None,
    idem_key: str | None = None,
) -> tuple[Job, bool]:
    """Enqueue one job of operation `op`; returns (job, replayed).

    The idempotency fingerprint is taken over the request as the client sent it (before a random seed
    is filled in), so a replay matches. With an Idempotency-Key, the first request stores key -> (job id,
    fingerprint); a repeat with the same request returns that job (replayed=True), with another a 422.
    """
    ensure_servable(redis, queue, op.name)
    if getattr(params, "upscale", False):
        ensure_servable(redis, queue, IF_UPSCALE)
    uploads = uploads or {}
    request = params.model_dump(mode="json")
    fingerprint = _fingerprint(op.name, request, uploads)
    job_params = request | {"seed": pick_seed(params.seed)}
    job_id = new_job_id()
    if idem_key is not None:
        if not (1 <= len(idem_key) <= 200):
            raise Problem(
                422,
                "invalid-idempotency-key",
                "Idempotency-Key must be 1 to 200 characters",
                errors=[{"name": "Idempotency-Key", "in": "header", "reason": "length 1..200"}],
            )
        record = json.dumps({"job_id": job_id, "fingerprint": fingerprint})
        key = idempotency_key(idem_key)
        if not redis.set(key, record, nx=True, ex=settings.result_ttl_s):
            existing = json.loads(redis.get(key) or "{}")
            if existing.get("fingerprint") != fingerprint:
                raise Problem(
                    422,
                    "idempotency-key-reused",
                    "this Idempotency-Key was already used with a different request body",
                    errors=[{"name": "Idempotency-Key", "in": "header", "reason": "reused with another body"}],
                )
            try:
                return Job.fetch(existing["job_id"], connection=redis), True
            except NoSuchJobError:
                raise Problem(410, "job-expired", "the job created with this Idempotency-Key has expired") from None

    try:
        if queue.count >= settings.max_queue_depth:
            raise Problem(
                503,
                "queue-full",
                f"the queue holds {settings.max_queue_depth} jobs already; retry later",
                headers={"Retry-After": "5"},
            )
        folder = storage.job_dir(settings.results_dir, job_id) / storage.INPUTS
        for name, data in uploads.items():
            storage.write_bytes_atomic(folder / name, data)
        # before the enqueue, so that it precedes whatever the worker publishes
        publish_event(redis, settings, job_id, "status", {"status": JobState.queued.value})
        now = datetime.now(UTC)
        job = queue.enqueue_call(
            func=op.job,
            kwargs={"params": job_params},
            job_id=job_id,
            timeout=settings.job_timeout_s,
            result_ttl=settings.result_ttl_s,
            failure_ttl=settings.result_ttl_s,
            retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
            meta={"kind": op.name, "params": job_params, "submitted_at": now.isoformat(), "attempts": 0},
        )
        redis.set(tombstone_key(job_id), str(int(time.time())), ex=settings.tombstone_ttl_s)
    except BaseException:
        if idem_key is not None:
            redis.delete(idempotency_key(idem_key))
        raise
    return job, False


def fetch(redis: Redis, job_id: str) -> Job:
    """The job, or a 404 (never existed / not an id) or 410 (expired) problem."""
    if not storage.is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    try:
        return Job.fetch(job_id, connection=redis)
    except NoSuchJobError:
        if redis.exists(tombstone_key(job_id)):
            raise Problem(410, "job-expired", f"job {job_id} has expired and its results were deleted") from None
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}") from None


def result_of(job: Job) -> dict[str, Any]:
    """The job function's return value (read once per Job object: it is a stream read in Redis)."""
    if "_svc_result" not in job.__dict__:
        value = job.return_value() if _RQ_TO_STATE.get(job.get_status(refresh=False)) is JobState.succeeded else None
        job.__dict__["_svc_result"] = value if isinstance(value, dict) else {}
    result: dict[str, Any] = job.__dict__["_svc_result"]
    return result


def state_of(job: Job) -> JobState:
    status = job.get_status(refresh=False)
    state = _RQ_TO_STATE.get(status, JobState.queued)
    if state is JobState.succeeded and result_of(job).get("status") == JobState.canceled.value:
        return JobState.canceled
    return state


def _error_of(job: Job, state: JobState) -> str | None:
    if state is not JobState.failed:
        return None
    if job.meta.get("error"):
        return str(job.meta["error"])
    result = job.latest_result()
    text = (getattr(result, "exc_string", None) or job.exc_info or "").strip()
    if "AbandonedJobError" in text:
        return "the worker running this job died; it was not retried (no retries left)"
    if "JobTimeoutException" in text:
        return "the job exceeded its time limit"
    return text.splitlines()[-1] if text else "the job failed"


def _utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def _when(recorded: str | None, fallback: datetime | None) -> datetime | None:
    """A time the service recorded in the job's meta (stable across polls), else RQ's own."""
    return datetime.fromisoformat(recorded) if recorded else _utc(fallback)


def view(job: Job, redis: Redis, queue: Queue) -> JobBody:
    """The client's view of a job (status, progress, position, times, results, error)."""
    state = state_of(job)
    meta = job.meta or {}
    progress = meta.get("progress") if state in (JobState.running, JobState.succeeded, JobState.canceled) else None
    position = None
    if state is JobState.queued:
        position = queue.get_job_position(job.id)
    results: dict[str, str] = {}
    result_url = None
    if state is JobState.succeeded:
        value = result_of(job)
        for name in value.get("files", []):
            results[name] = f"/jobs/{job.id}/files/{name}"
        if value.get("main"):
            result_url = f"/jobs/{job.id}/result"

    return JobBody(
        id=job.id,
        kind=str(meta.get("kind", "unknown")),
        status=state,
        progress=Progress(**progress) if progress else None,
        queue_position=position,
        created_at=_utc(job.created_at),
        started_at=_when(meta.get("started_at"), job.started_at) if state is not JobState.queued else None,
        finished_at=_when(meta.get("finished_at"), job.ended_at) if state.terminal else None,
        params=meta.get("params", {}),
        result_url=result_url,
        results=results,
        error=_error_of(job, state),
        cancel_requested=bool(redis.exists(cancel_key(job.id))),
        attempts=max(int(meta.get("attempts", 0)), 1),
    )


def cancel(redis: Redis, job: Job, settings: Settings) -> None:
    """Cancel a job: a queued one at once, a running one at its next sampling step."""
    state = state_of(job)
    if state.terminal:
        raise Problem(409, "job-finished", f"job {job.id} is already {state.value}")
    redis.set(cancel_key(job.id), "1", ex=settings.result_ttl_s)
    redis.publish(cancel_channel(), job.id)
    if state is JobState.queued:
        try:
            job.cancel()
        except InvalidJobOperation:
            pass  # canceled concurrently: fine
        else:
            job.meta["finished_at"] = datetime.now(UTC).isoformat()
            job.save_meta()
    job.refresh()
    job.__dict__.pop("_svc_result", None)
    if state_of(job).terminal:  # canceled while queued: no worker will say so
        publish_done(redis, Queue(settings.queue_name, connection=redis), settings, job)


def publish_event(redis: Redis, settings: Settings, job_id: str, event: str, data: dict[str, Any]) -> None:
    """Append one event to the job's event stream (``core.events``); expires with the job's results."""
    events.publish(redis, job_id, event, data, ttl_s=settings.result_ttl_s)


def publish_done(redis: Redis, queue: Queue, settings: Settings, job: Job) -> None:
    """The terminal event of a terminal job: its body as ``GET /jobs/{id}`` shows it (a no-op once published)."""
    body = view(job, redis, queue)
    publish_event(redis, settings, job.id, "done", body.model_dump(mode="json"))
