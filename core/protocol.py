"""The contract between the API process and the worker processes (no torch here).

The job vocabulary, the errors a job ends with, and the Redis keys besides RQ's own. A job's state lives in one
hash, ``core.record``; the operations and the dotted names of their job functions are in ``core.operations``.

| key | type | what |
| --- | --- | --- |
| ``rq:job:<job>`` | hash | the job record: RQ's own fields and the service's (``core.record``) |
| ``rq:queue:<queue>`` | list | RQ's queue of job ids; workers claim from its head |
| ``svc:events:<job>`` | stream | the job's events (``core.events``) |
| ``svc:known:<job>`` | string | a tombstone that outlives the record, so that an expired id answers 410 |
| ``svc:idem:<key>`` | string | Idempotency-Key -> job id and request fingerprint |
| ``svc:workers:<queue>`` | sorted set | live workers of a queue: name -> heartbeat expiry (unix seconds) |
| ``svc:held:<worker>`` | list | the jobs a worker holds (claimed, running or being committed) |
| ``svc:capabilities`` | hash | worker name -> what it serves, and why not the rest (JSON) |
| ``svc:cancels`` | pub/sub channel | the id of each job whose cancel was requested while it ran |
| ``svc:submitted`` | pub/sub channel | the base queue name, once per job submitted to a list the workers do not block on (``core.lifecycle``) |
| ``svc:fair:<queue>`` | hash | the fair-share claim's state: whose turn it is and each tenant's deficit (``core.record.START``) |
| ``svc:queued:<queue>:<tenant>`` | string | a tenant's jobs waiting or running, for its ``max_queued`` |
| ``svc:cache:<queue>:<tenant>:<key>`` | string | result cache: request key -> the job registered for it (``app.cache``) |
| ``svc:webhooks`` | sorted set | webhook deliveries ``<job>:<event>`` -> when to send them (``core.webhooks``) |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

KEY_PREFIX = "svc"


class JobState(str, enum.Enum):
    """The one job vocabulary of the service."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.canceled)


TERMINAL_STATES = tuple(s.value for s in JobState if s.terminal)


class JobCanceled(Exception):
    """Raised inside a job (from its per-step callback) when a client canceled it."""


class JobInterrupted(Exception):
    """Raised inside a job (from its per-step callback) when its worker is shutting down: the job is handed back
    to the queue, not failed."""


@dataclass(frozen=True)
class ErrorCode:
    """A stable error code a client may branch on, and the HTTP-free sentence that explains it."""

    code: str
    doc: str


#: Every code a failed job may carry (``JobError.code``); README "Errors of a job" lists them.
ERROR_CODES: dict[str, str] = {
    "invalid-request": "the parameters or an upload were refused by the worker (the message says which)",
    "out-of-memory": "the device ran out of memory; a smaller request (fewer images or steps) may fit",
    "timeout": "the job ran past its time limit (JOB_TIMEOUT_S)",
    "worker-lost": "the worker running the job died and the job had no retries left",
    "model-unavailable": "the worker that took the job does not hold the model it needs",
    "store-unavailable": "the results could not be written to storage in time",
    "internal-error": "an unexpected error; the worker logged it with the job id",
}


class JobError(Exception):
    """What a client sees of a failed job: a stable ``code`` (``ERROR_CODES``) and a message with no server path
    or traceback in it."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown job error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


def tombstone_key(job_id: str) -> str:
    """Outlives the job record so that an expired id answers 410, an unknown one 404."""
    return f"{KEY_PREFIX}:known:{job_id}"


def idempotency_key(key: str) -> str:
    return f"{KEY_PREFIX}:idem:{key}"


def capabilities_key() -> str:
    """Hash worker name -> JSON of what that worker has loaded and serves, and why not the rest (read by
    /readyz and by the API's 503 answers): ``{"device", "models", "operations", "unavailable": {op: reason}}``."""
    return f"{KEY_PREFIX}:capabilities"


def workers_key(queue: str) -> str:
    """Sorted set of the live workers of ``queue``: name -> the unix time their last heartbeat expires."""
    return f"{KEY_PREFIX}:workers:{queue}"


def held_key(worker: str) -> str:
    """List of the job ids a worker holds: claimed from the queue and not yet committed."""
    return f"{KEY_PREFIX}:held:{worker}"


def submitted_channel() -> str:
    """Pub/sub channel on which a submission announces its base queue's name when the job went to a list the idle
    workers do not block on (every job with a tenants file; a high or low priority one without): one subscription
    per worker wakes its claim."""
    return f"{KEY_PREFIX}:submitted"


def cache_key(queue: str, tenant: str, digest: str) -> str:
    """The result cache's entry of a request (``digest``: the SHA-256 of what determines its output), per queue
    (deployments that share a Redis keep apart: their stores differ) and per tenant (a hit must not tell one tenant
    what another asked for, nor let another's delete take its files away)."""
    return f"{KEY_PREFIX}:cache:{queue}:{tenant}:{digest}"


def cancel_channel() -> str:
    """Pub/sub channel on which the API announces the cancel of a running job (its id), next to setting the
    record's cancel flag, so that workers learn it without a Redis call per sampling step."""
    return f"{KEY_PREFIX}:cancels"
