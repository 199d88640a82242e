"""The contract between the API process and the worker processes (no torch here).

Redis keys besides RQ's own, the job vocabulary, and the names of job functions. The API
enqueues by dotted name, so it never imports the worker's heavy modules.
"""

from __future__ import annotations

import enum

KEY_PREFIX = "svc"
JOB_FUNCTIONS = {
    "mnist_sample": "workers.jobs.mnist_sample",
    "if_sample": "workers.jobs.if_sample",
    "if_sdedit": "workers.jobs.if_sdedit",
    "if_inpaint": "workers.jobs.if_inpaint",
    "if_anagram": "workers.jobs.if_anagram",
    "if_hybrid": "workers.jobs.if_hybrid",
    "if_denoise": "workers.jobs.if_denoise",
}


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


def tombstone_key(job_id: str) -> str:
    """Outlives the RQ job hash so that an expired id answers 410, an unknown one 404."""
    return f"{KEY_PREFIX}:known:{job_id}"


def idempotency_key(key: str) -> str:
    return f"{KEY_PREFIX}:idem:{key}"


def capabilities_key() -> str:
    """Hash worker name -> JSON of what that worker has loaded (read by /readyz)."""
    return f"{KEY_PREFIX}:capabilities"
