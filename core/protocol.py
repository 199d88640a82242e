"""The contract between the API process and the worker processes (no torch here).

The job vocabulary and the Redis keys besides RQ's own. The operations and the dotted names of their
job functions are in ``core.operations``.
"""

from __future__ import annotations

import enum

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


class JobCanceled(Exception):
    """Raised inside a job (from its per-step callback) when a client canceled it."""


def cancel_key(job_id: str) -> str:
    """Set by the API when a client cancels; polled by the job every sampling step."""
    return f"{KEY_PREFIX}:cancel:{job_id}"


def cancel_channel() -> str:
    """Pub/sub channel on which the API announces each cancel (the job id), next to setting its cancel key, so
    that workers learn it without checking Redis at every sampling step."""
    return f"{KEY_PREFIX}:cancels"


def tombstone_key(job_id: str) -> str:
    """Outlives the RQ job hash so that an expired id answers 410, an unknown one 404."""
    return f"{KEY_PREFIX}:known:{job_id}"


def idempotency_key(key: str) -> str:
    return f"{KEY_PREFIX}:idem:{key}"


def capabilities_key() -> str:
    """Hash worker name -> JSON of what that worker has loaded and serves, and why not the rest (read by
    /readyz and by the API's 503 answers): ``{"device", "models", "operations", "unavailable": {op: reason}}``."""
    return f"{KEY_PREFIX}:capabilities"
