"""Job lifecycle on the API side: submit (with idempotency, limits, the result cache and back-pressure), view,
cancel, delete.

The API enqueues each operation's job by the dotted name of its job function (``core.operations.Operation.job``),
never importing it, with its validated parameters, on the queue of the caller's tenant and the job's priority; the
job record (``core.record``) is written by the same pipeline. Uploads are stored with the job (``inputs/<name>``)
before it is enqueued.

A submission, in order: the tenant's rate (``app.quotas``; 429), the result cache for a seeded request
(``app.cache``: one ``SET NX GET``; a hit answers at once with a succeeded job that shows its source's files), the
queue's depth (503), the tenant's ``max_queued`` (a place reserved by one script; 429), the uploads, the enqueue.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.cache import cache_digest
from app.problems import Problem
from app.quotas import Quotas
from app.schemas import OperationState
from app.webhooks import checked_webhook
from core.gauges import merge_step_times
from core.lifecycle import AsyncRecords, Lifecycle, tombstone_parts
from core.operations import IF_UPSCALE, OPERATIONS, Operation, OperationParams, cost_key, estimated_steps, step_weight
from core.protocol import JobState, cache_key, capabilities_key, idempotency_key
from core.record import JobRecord, utc_now
from core.settings import Settings
from core.store import ResultStore, StoreUnavailable, is_job_id
from core.tenants import DEFAULT_TENANT, Tenant

#: Retry-After of a submission refused for its tenant's max_queued: a job of the tenant has to end first
MAX_QUEUED_RETRY_AFTER_S = 5


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


@dataclass(frozen=True)
class Workers:
    """The live workers as a recent look saw them: how many, each operation's state, what each published."""

    at: float
    live: int
    states: dict[str, OperationState]
    infos: dict[str, Any] = field(default_factory=dict)


_states_cache: dict[tuple[int, str], Workers] = {}
_states_lock = threading.Lock()


def _cached_workers(lifecycle: Lifecycle) -> Workers | None:
    with _states_lock:
        cached = _states_cache.get((id(lifecycle), lifecycle.queue.name))
    return cached if cached is not None and time.monotonic() - cached.at < STATES_TTL_S else None


def recent_workers(lifecycle: Lifecycle) -> Workers:
    """``operation_states`` at most ``STATES_TTL_S`` old: a submit or a poll costs no worker scan while traffic is
    high (blocking when the look is stale: call it in a thread)."""
    cached = _cached_workers(lifecycle)
    if cached is not None:
        return cached
    live, states, infos = operation_states(lifecycle)
    fresh = Workers(time.monotonic(), len(live), states, infos)
    with _states_lock:
        _states_cache[(id(lifecycle), lifecycle.queue.name)] = fresh
    return fresh


async def recent_workers_async(lifecycle: Lifecycle) -> Workers:
    """``recent_workers`` from the event loop: no thread hop while the look is fresh."""
    cached = _cached_workers(lifecycle)
    return cached if cached is not None else await run_in_threadpool(recent_workers, lifecycle)


def _recent_states(lifecycle: Lifecycle) -> tuple[int, dict[str, OperationState]]:
    seen = recent_workers(lifecycle)
    return seen.live, seen.states


def eta_s(workers: Workers, record: JobRecord, position: int | None, default_step_s: float) -> float | None:
    """Seconds until a queued job ends, estimated: the jobs admitted before it and itself (``position + 1``), each
    taken to cost what this job costs (its steps times its step weight times the seconds per weighted step the live
    workers measured for its operation, else ``default_step_s``), shared by the live workers. It ignores what the
    running jobs have left and how much the jobs ahead really differ from it. None with no live worker."""
    if position is None or record.state is not JobState.queued or workers.live == 0:
        return None
    per_step = merge_step_times(list(workers.infos.values())).get(cost_key(record.kind, record.params), default_step_s)
    own = estimated_steps(record.kind, record.params) * step_weight(record.kind, record.params) * per_step
    return round((position + 1) * own / workers.live, 3)


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
        value = lifecycle.depth()
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
    tenant: Tenant | None = None,
    owner: str | None = None,
    quotas: Quotas | None = None,
    headers: dict[str, str] | None = None,
    exact_position: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Enqueue one job of operation `op` for ``tenant`` (see the module docstring); returns (its body as
    ``GET /jobs/{id}`` shows it, replayed). ``owner``: the tenant an Idempotency-Key replay must belong to (None:
    any). ``headers`` (out): the RateLimit headers of the tenant's rate, for the answer. ``exact_position=False``:
    the caller will not show the queue position (it waits for the job's end), so the submission reads no more
    than its own list's length.

    The idempotency fingerprint is taken over the request as the client sent it (before a random seed
    is filled in), so a replay matches. With an Idempotency-Key, the first request stores key -> (job id,
    fingerprint); a repeat with the same request returns that job (replayed=True), with another a 422.
    """
    tenant = tenant or Tenant(DEFAULT_TENANT)
    workers = recent_workers(lifecycle)
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
        key = idempotency_key(f"{tenant.name}:{idem_key}" if owner is not None else idem_key)
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
                owner=owner,
            )
            return found.body(position, eta_s(workers, found, position, settings.pending_step_s_default)), True

    counted: str | None = None
    cache_entry: str | None = None
    owns_entry = False
    enqueued = False
    try:
        if quotas is not None:
            rate = quotas.take(tenant)
            if headers is not None:
                headers.update(rate)
        submitted = utc_now()
        record = JobRecord(
            id=job_id,
            state=JobState.queued,
            kind=op.name,
            func=op.job,
            params=job_params,
            submitted=submitted,
            request_id=request_id,
            traceparent=traceparent,
            tenant=tenant.name,
            priority=params.priority,
            webhook=hook[0] if hook else None,
            webhook_events=hook[1] if hook else (),
        )
        if params.seed is not None and params.cache and not hook:  # (a webhook wants its job run and delivered)
            digest = cache_digest(op, job_params, uploads, workers.infos)
            if digest is not None:
                cache_entry = cache_key(lifecycle.queue.name, tenant.name, digest)
                ttl = settings.result_ttl_s + settings.job_timeout_s
                source = lifecycle.cache_claim(cache_entry, job_id, ttl)
                owns_entry = source is None
                if source is not None:
                    answered = lifecycle.cache_answer(record, source, cache_entry, ttl)
                    if isinstance(answered, JobRecord):
                        enqueued = True  # (a job all the same: its Idempotency-Key stays)
                        return answered.body(), False
                    owns_entry = answered  # the entry's job had failed or vanished: it is this job's now
        depth = depth or QueueDepth(0.0)
        if depth.get(lifecycle) >= settings.max_queue_depth:
            raise Problem(
                503,
                "queue-full",
                f"the queue holds {settings.max_queue_depth} jobs already (MAX_QUEUE_DEPTH); retry later",
                headers={"Retry-After": "5"},
            )
        if tenant.max_queued is not None:
            counted = lifecycle.reserve(tenant.name, tenant.max_queued)
            if counted is None:
                raise Problem(
                    429,
                    "too-many-queued",
                    f"tenant {tenant.name} has {tenant.max_queued} jobs waiting or running (max_queued); "
                    "submit again once one has ended",
                    headers={"Retry-After": str(MAX_QUEUED_RETRY_AFTER_S), **(headers or {})},
                )
        try:
            for name, data in uploads.items():  # before the enqueue: the worker reads them from the store
                store.put(job_id, f"inputs/{name}", data)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from exc
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
            tenant=tenant.name,
            priority=params.priority,
            counted=counted,
            cache_key=cache_entry if owns_entry else None,
            exact_position=exact_position,
            webhook=hook[0] if hook else None,
            webhook_events=hook[1] if hook else (),
        )
        enqueued = True
        depth.seen(position + 1)
    finally:
        if not enqueued:
            if idem_key is not None:
                redis.delete(idempotency_key(f"{tenant.name}:{idem_key}" if owner is not None else idem_key))
            if counted is not None:
                lifecycle.release(counted)
            if owns_entry and cache_entry is not None and redis.get(cache_entry) in (job_id, job_id.encode()):
                redis.delete(cache_entry)
    return record.body(position, eta_s(workers, record, position, settings.pending_step_s_default)), False


def fetch(
    lifecycle: Lifecycle, job_id: str, *, expired_detail: str | None = None, owner: str | None = None
) -> tuple[JobRecord, int | None]:
    """The job's record and queue position, or a 404 (never existed / not an id / another tenant's) or 410
    (expired) problem. ``owner``: the tenant the job must belong to (None: any)."""
    if not is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    return _found(job_id, *lifecycle.view(job_id), expired_detail=expired_detail, owner=owner)


async def fetch_async(records: AsyncRecords, job_id: str, *, owner: str | None = None) -> tuple[JobRecord, int | None]:
    """``fetch`` on the event loop (a poll: one round trip, no thread hop)."""
    if not is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    return _found(job_id, *await records.view(job_id), owner=owner)


def check_owner(record: JobRecord, owner: str | None) -> JobRecord:
    """404 for a job of another tenant than ``owner`` (None: any tenant): exactly the answer of an unknown id."""
    if owner is not None and record.tenant != owner:
        raise Problem(404, "job-not-found", f"no job with id {record.id!r}")
    return record


def _found(
    job_id: str,
    record: JobRecord | None,
    position: int | None,
    tombstone: str | None,
    *,
    expired_detail: str | None = None,
    owner: str | None = None,
) -> tuple[JobRecord, int | None]:
    if record is not None:
        return check_owner(record, owner), position
    what, tenant = tombstone_parts(tombstone)
    other = owner is not None and tenant is not None and tenant != owner
    tombstone = None if other else what  # another tenant's job: as unknown as an id never used
    if tombstone == "deleted":
        raise Problem(410, "job-deleted", f"job {job_id} was deleted, with its results and uploads")
    if tombstone is not None:
        raise Problem(410, "job-expired", expired_detail or f"job {job_id} has expired and its results were deleted")
    raise Problem(404, "job-not-found", f"no job with id {job_id!r}")


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
    whatever it stored after this. Afterwards the job answers 410 ``job-deleted``. A job answered from the result
    cache owns no stored object (its files are its source's): only its record goes."""
    if record.source is None:
        try:
            store.delete_job(record.id)
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from exc
    lifecycle.delete(record.id)
