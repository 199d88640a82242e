"""The frame of one job: parameters, progress, cancellation, files, manifest and failure reporting.

A job function reads top to bottom::

    def mnist_sample(params: dict[str, Any]) -> dict[str, Any]:
        with job_frame(MnistSample, params) as job:
            images = generate(job.model("mnist_class"), ..., generator=job.generator, callback=job.progress)
            job.save("samples.png", png_bytes(grid), main=True)
        return job.result

Contract of a job: its parameters as JSON in (validated again here with the operation's model and the
worker's limits); PNGs and a ``manifest.json`` written to the job's folder; a small dict returned
(``{"status", "main", "files", "timings"}``), which the API turns into result URLs. Failure semantics:

- a client cancel is seen by the per-step callback, which raises ``JobCanceled``; the frame then returns
  ``{"status": "canceled"}`` (nothing retried, no manifest);
- an exception raised inside the frame (bad input, out of memory, a bug) fails the job with a clear
  message in ``meta["error"]`` and is not retried: it would fail the same way again;
- only a worker that dies mid-job (kill -9, power loss) leads to a retry (JOB_RETRIES, default 1),
  through RQ's abandoned-job cleanup; after the last retry the job fails with a reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import torch
from pydantic import ValidationError
from redis import Redis
from rq import get_current_job
from rq.job import Job

from core import storage
from core.operations import OPERATIONS, OperationParams
from core.protocol import JobCanceled, JobState, cancel_key
from models.driver import Runner
from workers.cancellation import CancelWatch
from workers.registry import ModelRegistry, get_cancels, get_registry, get_runner, get_settings

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.05
P = TypeVar("P", bound=OperationParams)

_KIND_OF = {op.params: op.name for op in OPERATIONS.values()}


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())


class JobFrame(Generic[P]):
    """Context manager around one job's body (see the module docstring).

    Attributes (inside the ``with`` block):
        params: the validated parameters.
        registry: the worker's resident models.
        result: after the block, the job's return value.
    """

    def __init__(
        self,
        model: type[P],
        params: dict[str, Any],
        *,
        kind: str | None = None,
        job: Job | None = None,
        registry: ModelRegistry | None = None,
        results_dir: Path | None = None,
    ) -> None:
        self.kind = kind or _KIND_OF.get(model, model.__name__)
        self._model, self._raw = model, params
        self.job = job if job is not None else get_current_job()
        if self.job is None:
            raise RuntimeError("a job frame must be opened inside an RQ job")
        self.registry = registry if registry is not None else get_registry()
        settings = get_settings()
        self._settings = settings
        self.folder = storage.job_dir(results_dir if results_dir is not None else settings.results_dir, self.job.id)
        self.files: dict[str, dict[str, Any]] = {}
        self.main: str | None = None
        self.result: dict[str, Any] = {}
        self._extra: dict[str, Any] = {}
        self._last_progress = 0.0
        self._t0 = 0.0
        self._started = 0.0
        self._cancels: CancelWatch | None = None

    # -- the with block ---------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        job = self.job
        assert job is not None
        job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
        job.meta.pop("error", None)
        job.save_meta()
        self._started, self._t0 = time.time(), time.perf_counter()
        self._cancels = get_cancels()
        if self._cancels is not None:
            self._cancels.watch(job.id)
        try:
            self.params: P = self._model.bounded(self._settings).model_validate(self._raw)
        except ValidationError as exc:
            self._fail(f"invalid request: {_validation_message(exc)}")
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._cancels is not None and self.job is not None:
            self._cancels.unwatch(self.job.id)
        if exc is None:
            self.result = self._finish()
            return False
        if isinstance(exc, JobCanceled):
            log.info("job %s canceled", self.job.id if self.job else "?")
            self.result = {"status": JobState.canceled.value, "files": [], "main": None}
            return True
        if isinstance(exc, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._fail(f"out of memory while running {self.kind}; try a smaller request (fewer images or steps)")
        elif isinstance(exc, ValidationError):
            self._fail(f"invalid request: {_validation_message(exc)}")
        elif isinstance(exc, ValueError | KeyError):
            self._fail(f"invalid request: {exc}")
        elif isinstance(exc, Exception):
            self._fail(f"{type(exc).__name__}: {exc}")
        return False

    def _fail(self, message: str) -> None:
        job = self.job
        assert job is not None
        job.meta["error"] = message
        job.retries_left = 0  # deterministic failure: a retry would fail the same way
        job.save_meta()

    def _finish(self) -> dict[str, Any]:
        job = self.job
        assert job is not None
        timings = {"model_s": round(time.perf_counter() - self._t0, 4)}
        manifest = {
            "job_id": job.id,
            "kind": self.kind,
            "request": self.params.model_dump(mode="json"),
            "seed": self.params.seed,
            "device": str(self.registry.device),
            "files": self.files,
            "main": self.main,
            "started_at": self._started,
            "timings": timings,
            "attempt": job.meta["attempts"],
            "worker": job.worker_name,
            **self._extra,
        }
        storage.write_manifest(self.folder, manifest)
        return {
            "status": JobState.succeeded.value,
            "main": self.main,
            "files": [*self.files, storage.MANIFEST],
            "timings": timings,
        }

    # -- what a job body uses ---------------------------------------------------------------------------
    def model(self, name: str) -> Any:
        """A resident model of this worker (``mnist_class``, ``if_stage1``, ...)."""
        return self.registry.get(name)

    @property
    def runner(self) -> Runner | None:
        """How the job's sampling requests run: the worker's batcher (shared forwards), or None (alone)."""
        return get_runner()

    @cached_property
    def generator(self) -> torch.Generator:
        """The job's one seeded generator (on the worker's device): the same seed gives the same PNGs."""
        if self.params.seed is None:
            raise ValueError("the job has no seed (the API always records one)")
        return torch.Generator(device=self.registry.device).manual_seed(int(self.params.seed))

    @property
    def redis(self) -> Redis:
        assert self.job is not None
        connection: Redis = self.job.connection
        return connection

    def check_canceled(self) -> None:
        """Raise JobCanceled if a client canceled the job (a set lookup with the worker's cancel watch)."""
        assert self.job is not None
        cancels = self.__dict__.get("_cancels")
        canceled = cancels.canceled(self.job.id) if cancels is not None else self.redis.exists(cancel_key(self.job.id))
        if canceled:
            raise JobCanceled(self.job.id)

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
        return (self.folder / storage.INPUTS / name).read_bytes()

    def save(self, name: str, data: bytes, *, main: bool = False, **info: Any) -> None:
        """Write one result file (listed in the manifest); ``main`` makes it ``GET /jobs/{id}/result``."""
        if not storage.FILE_NAME_RE.fullmatch(name):
            raise ValueError(f"bad result name {name!r}")
        storage.write_bytes_atomic(self.folder / name, data)
        self.files[name] = {"bytes": len(data), **info}
        if main:
            self.main = name

    def record(self, **fields: Any) -> None:
        """Extra manifest fields (model identities, ...)."""
        self._extra.update(fields)


def job_frame(model: type[P], params: dict[str, Any], *, kind: str | None = None) -> JobFrame[P]:
    """The frame of the current RQ job, validating ``params`` with ``model`` (see ``JobFrame``)."""
    return JobFrame(model, params, kind=kind)
