"""What every job function shares: the job context (progress, cancellation, files) and `run_job`.

Contract of a job: plain JSON arguments in; PNGs and a `manifest.json` written to the job's
folder; a small dict returned (`{"status", "main", "files", "timings"}`), which the API turns
into result URLs. Failure semantics:
- a client cancel is seen by the per-step callback, which raises `JobCanceled`; the job then
  returns `{"status": "canceled"}` (nothing retried, nothing written);
- an exception raised by the job itself (bad input, out of memory, a bug) fails the job with a
  clear message in `meta["error"]`, and is not retried: it would fail the same way again;
- only a worker that dies mid-job (kill -9, power loss) leads to a retry (JOB_RETRIES, default 1),
  through RQ's abandoned-job cleanup; after the last retry the job fails with a reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from redis import Redis
from rq import get_current_job
from rq.job import Job

from workers import storage
from workers.protocol import JobCanceled, JobState, cancel_key

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.05


@dataclass
class JobContext:
    """Handed to a job body: where to write, and the per-step callback."""

    job_id: str
    folder: Path
    job: Job | None = None
    redis: Redis | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    main: str | None = None
    _last_progress: float = 0.0

    def check_canceled(self) -> None:
        if self.redis is not None and self.redis.exists(cancel_key(self.job_id)):
            raise JobCanceled(self.job_id)

    def progress(self, step: int, total: int, *_: Any, stage: str | None = None) -> None:
        """Per-step callback for the samplers: records progress, raises JobCanceled on cancel."""
        self.check_canceled()
        now = time.monotonic()
        if self.job is not None and (step >= total or now - self._last_progress >= PROGRESS_MIN_INTERVAL_S):
            self._last_progress = now
            self.job.meta["progress"] = {"step": int(step), "total": int(total)} | ({"stage": stage} if stage else {})
            self.job.save_meta()

    def stage_progress(self, stage: str) -> Callable[..., None]:
        """The callback for one stage of a multi-stage job (progress carries the stage name)."""
        return lambda step, total, *rest: self.progress(step, total, stage=stage)

    def input_bytes(self, name: str) -> bytes:
        """An upload that the API stored with the job."""
        if not storage.FILE_NAME_RE.fullmatch(name):
            raise ValueError(f"bad input name {name!r}")
        return (self.folder / "inputs" / name).read_bytes()

    def save(self, name: str, data: bytes, *, main: bool = False, **info: Any) -> None:
        if not storage.FILE_NAME_RE.fullmatch(name):
            raise ValueError(f"bad result name {name!r}")
        storage.write_bytes_atomic(self.folder / name, data)
        self.files[name] = {"bytes": len(data), **info}
        if main:
            self.main = name


def _fail(job: Job | None, message: str) -> None:
    if job is not None:
        job.meta["error"] = message
        job.retries_left = 0  # deterministic failure: a retry would fail the same way
        job.save_meta()


def run_job(kind: str, params: dict[str, Any], body: Callable[[JobContext], dict[str, Any]], *,
            results_dir: Path, redis: Redis | None = None) -> dict[str, Any]:
    """Run `body(ctx)` with progress, cancellation, error reporting and the manifest.

    `body` writes its files with `ctx.save(...)` and returns extra manifest fields (seed,
    model identities...). Returns the job's small result dict.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_job must be called inside an RQ job")
    job_id = job.id
    redis = redis if redis is not None else job.connection
    ctx = JobContext(job_id=job_id, folder=storage.job_dir(results_dir, job_id), job=job, redis=redis)
    job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
    job.meta.pop("error", None)
    job.save_meta()
    started = time.time()
    t0 = time.perf_counter()
    try:
        ctx.check_canceled()
        extra = body(ctx)
    except JobCanceled:
        log.info("job %s canceled", job_id)
        return {"status": JobState.canceled.value, "files": [], "main": None}
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _fail(job, f"out of memory while running {kind}; try a smaller request (fewer images or steps)")
        raise
    except (ValueError, KeyError) as exc:
        _fail(job, f"invalid request: {exc}")
        raise
    except Exception as exc:
        _fail(job, f"{type(exc).__name__}: {exc}")
        raise
    model_seconds = time.perf_counter() - t0
    manifest = {
        "job_id": job_id,
        "kind": kind,
        "request": params,
        "files": ctx.files,
        "main": ctx.main,
        "started_at": started,
        "timings": {"model_s": round(model_seconds, 4)},
        "attempt": job.meta["attempts"],
        "worker": job.worker_name,
        **extra,
    }
    storage.write_manifest(ctx.folder, manifest)
    files = [*ctx.files, storage.MANIFEST]
    return {"status": JobState.succeeded.value, "main": ctx.main, "files": files,
            "timings": manifest["timings"]}
