"""Job lifecycle on the API side: submit (with idempotency and back-pressure), view, cancel.

The API enqueues each operation's job by the dotted name of its job function (``core.operations.Operation.job``),
never importing it, with its validated parameters; the job record (``core.record``) is written by the same
pipeline. Uploads are stored with the job (``inputs/<name>``) before it is enqueued.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from typing import Any

from app.problems import Problem
from app.schemas import OperationState
from app.webhooks import checked_webhook
from core.lifecycle import AsyncRecords, Lifecycle
from core.operations import IF_UPSCALE, OPERATIONS, Operation, OperationParams
from core.protocol import JobState, capabilities_key, idempotency_key
from core.record import JobRecord, utc_now
from core.settings import Settings
from core.store import ResultStore, StoreUnavailable, is_job_id


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


def operation_states(lifecycle: Lifecycle) -> tuple[list[str], dict[str, OperationState], dict[str, Any]]:
    """(live workers, each operation and the stage-II upscale with whether a live worker can serve it and why not,
    and what each live worker published).

    A worker publishes what it serves and, for the rest, the reason (a model that failed to load, DeepFloyd
    disabled, no CUDA device for IF_ENABLED=auto); workers whose heartbeat expired are not counted.
    """
    live = lifecycle.live_workers()
    published = lifecycle.redis.hmget(capabilities_key(), live) if live else []
    infos = {name: json.loads(_text(raw)) for name, raw in zip(live, published, strict=True) if raw}
    states = {}
    for name in [*OPERATIONS, IF_UPSCALE]:
        servers = sum(name in info.get("operations", []) for info in infos.values())
        reasons = sorted(
            {str(info["unavailable"][name]) for info in infos.values() if name in info.get("unavailable", {})}
        )
        if servers:
            states[name] = OperationState(available=True, workers=servers)
        else:
            reason = "; ".join(reasons) or ("no live worker" if not infos else "no live worker serves it")
            states[name] = OperationState(available=False, workers=0, reason=reason)
    return live, states, infos


STATES_TTL_S = 1.0
_states_cache: dict[tuple[int, str], tuple[float, int, dict[str, OperationState]]] = {}
_states_lock = threading.Lock()


def _recent_states(lifecycle: Lifecycle) -> tuple[int, dict[str, OperationState]]:
    """``operation_states`` at most ``STATES_TTL_S`` old: a submit costs no worker scan while traffic is high."""
    key = (id(lifecycle), lifecycle.queue.name)
    now = time.monotonic()
    with _states_lock:
        cached = _states_cache.get(key)
    if cached is not None and now - cached[0] < STATES_TTL_S:
        return cached[1], cached[2]
    live, states, _ = operation_states(lifecycle)
    with _states_lock:
        _states_cache[key] = (now, len(live), states)
    return len(live), states


def ensure_servable(lifecycle: Lifecycle, kind: str) -> None:
    """503 when live workers exist but none of them can serve `kind` (its model failed to load, or is not
    enabled). With no live worker at all the job is accepted and waits in the queue, so a restarting worker
    loses nothing. Uses a view of the workers at most a second old. A configuration problem (a model that is off
    or failed to load) carries no Retry-After: waiting will not fix it."""
    live, states = _recent_states(lifecycle)
    if live and not states[kind].available:
        raise Problem(503, "operation-unavailable", f"no live worker can serve {kind}: {states[kind].reason}")


def pick_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one that is recorded with the job."""
    return seed if seed is not None else secrets.randbelow(2**31)


class QueueDepth:
    """The queue's length as the last submissions saw it (each push replies with it), read again at most every
    ``max_age_s``: the back-pressure check costs no extra round trip per submission."""

    def __init__(self, max_age_s: float = 1.0) -> None:
        self.max_age_s = max_age_s
        self._value = 0
        self._at = -1e9
        self._lock = threading.Lock()

    def get(self, lifecycle: Lifecycle) -> int:
        with self._lock:
            if time.monotonic() - self._at < self.max_age_s:
                return self._value
        value = int(lifecycle.redis.llen(lifecycle.queue.key))
        self.seen(value)
        return value

    def seen(self, value: int) -> None:
        with self._lock:
            self._value, self._at = value, time.monotonic()


def store_unavailable(exc: StoreUnavailable) -> Problem:
    """503 for a result store that cannot be reached (the detail names no host or credential)."""
    return Problem(
        503,
        "store-unavailable",
        "the result store is unreachable; retry shortly",
        headers={"Retry-After": "5"},
    )


def submit(
    lifecycle: Lifecycle,
    store: ResultStore,
    settings: Settings,
    op: Operation,
    params: OperationParams,
    *,
    uploads: dict[str, bytes] | None = None,
    idem_key: str | None = None,
    depth: QueueDepth | None = None,
    job_id: str | None = None,
    request_id: str | None = None,
    traceparent: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Enqueue one job of operation `op`; returns (its body as ``GET /jobs/{id}`` shows it, replayed).

    The idempotency fingerprint is taken over the request as the client sent it (before a random seed
    is filled in), so a replay matches. With an Idempotency-Key, the first request stores key -> (job id,
    fingerprint); a repeat with the same request returns that job (replayed=True), with another a 422.
    """
    ensure_servable(lifecycle, op.name)
    if getattr(params, "upscale", False):
        ensure_servable(lifecycle, IF_UPSCALE)
    hook = checked_webhook(settings, op, params)  # the job options: not in the job's params (core.operations)
    uploads = uploads or {}
    request = params.model_dump(mode="json")
    job_params = request | {"seed": pick_seed(params.seed)}
    job_id = job_id or new_job_id()
    redis = lifecycle.redis
    if idem_key is not None:
        if not (1 <= len(idem_key) <= 200):
            raise Problem(
                422,
                "invalid-idempotency-key",
                "Idempotency-Key must be 1 to 200 characters",
                errors=[{"name": "Idempotency-Key", "in": "header", "reason": "length 1..200"}],
            )
        options = {"webhook": list(hook)} if hook else {}
        fingerprint = _fingerprint(op.name, request | options, uploads)
        entry = json.dumps({"job_id": job_id, "fingerprint": fingerprint})
        key = idempotency_key(idem_key)
        if not redis.set(key, entry, nx=True, ex=settings.result_ttl_s):
            existing = json.loads(redis.get(key) or "{}")
            if existing.get("fingerprint") != fingerprint:
                raise Problem(
                    422,
                    "idempotency-key-reused",
                    "this Idempotency-Key was already used with a different request body",
                    errors=[{"name": "Idempotency-Key", "in": "header", "reason": "reused with another body"}],
                )
            found, position = fetch(
                lifecycle,
                str(existing["job_id"]),
                expired_detail="the job created with this Idempotency-Key has expired",
            )
            return found.body(position), True

    try:
        depth = depth or QueueDepth(0.0)
        if depth.get(lifecycle) >= settings.max_queue_depth:
            raise Problem(
                503,
                "queue-full",
                f"the queue holds {settings.max_queue_depth} jobs already (MAX_QUEUE_DEPTH); retry later",
                headers={"Retry-After": "5"},
            )
        try:
            for name, data in uploads.items():  # before the enqueue: the worker reads them from the store
                store.put(job_id, f"inputs/{name}", data)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from exc
        submitted = utc_now()
        position = lifecycle.submit(
            job_id,
            kind=op.name,
            func=op.job,
            params=job_params,
            retries=settings.job_retries,
            timeout_s=settings.job_timeout_s,
            submitted=submitted,
            request_id=request_id,
            traceparent=traceparent,
            webhook=hook[0] if hook else None,
            webhook_events=hook[1] if hook else (),
        )
        depth.seen(position + 1)
    except BaseException:
        if idem_key is not None:
            redis.delete(idempotency_key(idem_key))
        raise
    record = JobRecord(
        id=job_id,
        state=JobState.queued,
        kind=op.name,
        func=op.job,
        params=job_params,
        submitted=submitted,
        request_id=request_id,
        traceparent=traceparent,
        webhook=hook[0] if hook else None,
        webhook_events=hook[1] if hook else (),
    )
    return record.body(position), False


def fetch(lifecycle: Lifecycle, job_id: str, *, expired_detail: str | None = None) -> tuple[JobRecord, int | None]:
    """The job's record and queue position, or a 404 (never existed / not an id) or 410 (expired) problem."""
    if not is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    return _found(job_id, *lifecycle.view(job_id), expired_detail=expired_detail)


async def fetch_async(records: AsyncRecords, job_id: str) -> tuple[JobRecord, int | None]:
    """``fetch`` on the event loop (a poll: one round trip, no thread hop)."""
    if not is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    return _found(job_id, *await records.view(job_id))


def _found(
    job_id: str,
    record: JobRecord | None,
    position: int | None,
    tombstone: str | None,
    *,
    expired_detail: str | None = None,
) -> tuple[JobRecord, int | None]:
    if record is None:
        if tombstone == "deleted":
            raise Problem(410, "job-deleted", f"job {job_id} was deleted, with its results and uploads")
        if tombstone is not None:
            raise Problem(
                410, "job-expired", expired_detail or f"job {job_id} has expired and its results were deleted"
            )
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    return record, position


def cancel(lifecycle: Lifecycle, record: JobRecord) -> None:
    """Cancel a job: a queued one at once, a running one at its next sampling step; 409 once it has ended."""
    if record.state.terminal:
        raise Problem(409, "job-finished", f"job {record.id} is already {record.state.value}")
    found = lifecycle.cancel(record)
    if found in ("succeeded", "failed", "canceled"):
        raise Problem(409, "job-finished", f"job {record.id} is already {found}")


def delete(lifecycle: Lifecycle, store: ResultStore, record: JobRecord) -> None:
    """Delete a job everywhere: its stored files and uploads first (a store that is down leaves the job whole:
    503, retry), then its record, events and queue entry; a running job is told to stop, and its worker removes
    whatever it stored after this. Afterwards the job answers 410 ``job-deleted``."""
    try:
        store.delete_job(record.id)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from exc
    lifecycle.delete(record.id)
