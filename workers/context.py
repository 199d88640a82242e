"""One job as its job function sees it (``JobContext``), and the run of one job from start to outcome (``execute``).

A job function reads top to bottom::

    @job_function(MnistSample)
    def mnist_sample(job: JobContext[MnistSample]) -> None:
        images = generate(job.model("mnist_class"), ..., generator=job.generator, callback=job.progress,
                          runner=job.runner)
        job.save("samples.png", png_bytes(grid), main=True)

``execute`` validates the parameters again (with the worker's limits), runs the function, writes the trajectory
and the manifest (the commit point), and maps whatever ended the job to an ``Outcome``; the work loop commits
the outcome to the job record (``core.lifecycle``), which pushes the ``done`` event. What ends a job:

| cause | outcome | client sees |
| --- | --- | --- |
| the function returned | succeeded | result files |
| a client canceled (the step callback raises ``JobCanceled``) | canceled | no manifest |
| its worker is shutting down (the callback raises ``JobInterrupted``) | handed back | queued again, same attempt count |
| ``JobError(code, message)`` raised by the job | failed | that code and message |
| its parameters fail validation | failed | ``invalid-request`` |
| past its deadline (the step driver ends its request, or a check between stages) | failed | ``timeout`` |
| out of memory | failed | ``out-of-memory`` |
| anything else | failed | ``internal-error``; the traceback is logged with the job id, never shown |

Messages a client sees never hold a server path or a traceback. A failure is not retried (it would fail the
same way); only a lost worker's job is (``JOB_RETRIES``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch
from pydantic import ValidationError

from core.lifecycle import Lifecycle
from core.operations import OPERATIONS, OperationParams
from core.protocol import JobCanceled, JobError, JobInterrupted, JobState
from core.record import JobRecord, parse_time, utc_now
from core.settings import Settings
from core.tenants import Tenants
from models.driver import DeadlineExceeded, Runner, drive
from workers.batcher import Batcher
from workers.cancellation import CancelWatch
from workers.progress import ProgressSink
from workers.registry import ModelNotLoaded, ModelRegistry
from workers.results import Files, ResultWriter
from workers.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)

P = TypeVar("P", bound=OperationParams)
JobFunction = Callable[["JobContext[Any]"], None]


def job_function(model: type[OperationParams]) -> Callable[[JobFunction], JobFunction]:
    """Mark a job function and the parameter model its job's ``params`` are validated with."""

    def mark(fn: JobFunction) -> JobFunction:
        fn.params_model = model  # type: ignore[attr-defined]
        return fn

    return mark


@functools.cache
def resolve(func: str) -> JobFunction:
    """The job function named by a record's ``func`` (a dotted name, as the API enqueued it)."""
    module, _, name = func.rpartition(".")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn) or not hasattr(fn, "params_model"):
        raise TypeError(f"{func} is not a job function")
    return fn  # type: ignore[no-any-return]


@dataclass
class WorkerEnv:
    """What every job of a worker process shares."""

    name: str
    settings: Settings
    registry: ModelRegistry
    lifecycle: Lifecycle
    files: Files
    store_errors: tuple[type[Exception], ...] = (OSError,)
    batcher: Batcher | None = None
    cancels: CancelWatch | None = None
    interrupt: threading.Event = field(default_factory=threading.Event)  # set: hand the jobs back now
    telemetry: WorkerTelemetry = field(default_factory=WorkerTelemetry)  # step times, metrics (workers.telemetry)
    tenants: Tenants = field(default_factory=Tenants.single)  # the weights of the step driver's fair share


class JobContext(Generic[P]):
    """One attempt of one job, for its job function (see the module docstring)."""

    def __init__(
        self,
        env: WorkerEnv,
        record: JobRecord,
        params: P,
        sink: ProgressSink,
        writer: ResultWriter,
        deadline: float,
    ) -> None:
        self.env = env
        self.record = record
        self.params = params
        self.registry = env.registry
        self.sink = sink
        self.writer = writer
        self.deadline = deadline
        self.notes: dict[str, Any] = {}
        self._generator: torch.Generator | None = None

    @property
    def id(self) -> str:
        return self.record.id

    def model(self, name: str) -> Any:
        """A resident model of this worker (``mnist_class``, ``if_stage1``, ...)."""
        return self.registry.get(name)

    @property
    def runner(self) -> Runner:
        """Runs the job's sampling requests: the worker's batcher (shared forwards, with the job's tenant and its
        weight as its share of a full forward) or alone, with the job's deadline enforced by the step driver."""
        if self.env.batcher is not None:
            tenant = self.record.tenant
            return functools.partial(
                self.env.batcher.run,
                deadline=self.deadline,
                group=tenant,
                weight=self.env.tenants.get(tenant).weight,
            )
        return functools.partial(drive, deadline=self.deadline, on_forward=self.env.telemetry.forwards.on_forward)

    @property
    def generator(self) -> torch.Generator:
        """The job's one seeded generator (on the worker's device): the same seed gives the same PNGs."""
        if self._generator is None:
            if self.params.seed is None:
                raise JobError("invalid-request", "the job has no seed")
            self._generator = torch.Generator(device=self.registry.device).manual_seed(int(self.params.seed))
        return self._generator

    def check(self) -> None:
        """Raise if the job must stop now: canceled, its worker handing it back, or past its deadline."""
        cancels = self.env.cancels
        if self.record.cancel or (cancels is not None and cancels.canceled(self.id)):
            raise JobCanceled(self.id)
        if self.env.interrupt.is_set():
            raise JobInterrupted(self.id)
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the job ran past its deadline")

    def progress(
        self, step: int, total: int, x: Any = None, preview: torch.Tensor | None = None, *, stage: str | None = None
    ) -> None:
        """Per-step callback for the samplers, ``callback(step, total, x, preview)``: raises to stop the job (see
        ``check``), then records the step with the progress sink (which never raises)."""
        self.check()
        self.sink.report(step, total, preview, stage)

    def stage_progress(self, stage: str) -> Callable[..., None]:
        """The callback for one stage of a multi-stage job (progress carries the stage name)."""
        return lambda step, total, *rest: self.progress(step, total, *rest, stage=stage)

    def input_bytes(self, name: str) -> bytes:
        """An upload the API stored with the job."""
        return self.writer.input_bytes(name)

    def save(self, name: str, data: bytes, *, main: bool = False, **info: Any) -> None:
        """Write one result file (listed in the manifest); ``main`` makes it ``GET /jobs/{id}/result``."""
        self.writer.save(name, data, main=main, **info)

    def note(self, **fields: Any) -> None:
        """Extra manifest fields (model identities, ...)."""
        self.notes.update(fields)


@dataclass
class Outcome:
    """How an attempt ended: a terminal record to commit, or ``handed_back``."""

    record: JobRecord
    handed_back: bool = False
    final_progress: dict[str, Any] | None = None


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())


def execute(env: WorkerEnv, record: JobRecord) -> Outcome:
    """Run one started job to its outcome (see the module docstring); never raises."""
    settings = env.settings
    started = time.monotonic()
    timeout_s = record.timeout_s or settings.job_timeout_s
    deadline = started + timeout_s
    writer = ResultWriter(
        record.id, env.files, retry_on=env.store_errors, write_timeout_s=settings.store_write_timeout_s
    )
    op = OPERATIONS.get(record.kind)
    sink = ProgressSink(
        record.id,
        record.attempt,
        env.lifecycle,
        writer.put_preview,
        value_range=op.value_range if op is not None else (-1.0, 1.0),
        preview_every=settings.preview_every,
        previews=bool(record.params.get("previews")),
        trajectory=bool(record.params.get("trajectory")),
    )
    if env.cancels is not None:
        env.cancels.watch(record.id, already=record.cancel)
    t0 = time.perf_counter()
    state, error = JobState.succeeded, None
    files: list[str] = []
    model_s = 0.0
    try:
        fn = resolve(record.func)
        params = fn.params_model.bounded(settings).model_validate(record.params)  # type: ignore[attr-defined]
        job = JobContext(env, record, params, sink, writer, deadline)
        fn(job)
        job.check()
        model_s = time.perf_counter() - t0
        writer.write_trajectory(sink.frames)
        manifest = {
            "job_id": record.id,
            "kind": record.kind,
            "request": params.model_dump(mode="json"),
            "seed": params.seed,
            "device": str(env.registry.device),
            "files": writer.files,
            "main": writer.main,
            "started_at": record.started,
            "timings": {"model_s": round(model_s, 4)},
            "attempt": record.attempt,
            "worker": env.name,
            **job.notes,
        }
        files = writer.commit(manifest)
    except JobCanceled:
        log.info("job %s canceled", record.id)
        state = JobState.canceled
    except JobInterrupted:
        log.info("job %s handed back: the worker is stopping", record.id)
        sink.flush()
        return Outcome(record, handed_back=True)
    except DeadlineExceeded:
        error = JobError("timeout", f"the job ran past its time limit of {timeout_s:g} s")
    except JobError as exc:
        error = exc
    except ValidationError as exc:
        error = JobError("invalid-request", f"invalid request: {_validation_message(exc)}")
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        error = JobError(
            "out-of-memory", f"out of memory while running {record.kind}; try a smaller request (fewer images or steps)"
        )
    except ModelNotLoaded as exc:  # the load error may name a server path: the log has it, the client not
        log.warning("job %s: %s", record.id, exc)
        error = JobError(
            "model-unavailable",
            f"the worker that took the job does not hold the model {exc.model or 'it needs'}; /readyz says why",
        )
    except Exception:
        log.exception("job %s (%s) failed with an unexpected error", record.id, record.kind)
        error = JobError("internal-error", f"the job failed with an internal error (logged by worker {env.name})")
    finally:
        if env.cancels is not None:
            env.cancels.unwatch(record.id)
    sink.flush()
    now = utc_now()
    submitted, begun = parse_time(record.submitted), parse_time(record.started)
    timings = {"run_s": round(time.monotonic() - started, 4)}
    if submitted is not None and begun is not None:
        timings["queued_s"] = round((begun - submitted).total_seconds(), 4)
    if error is not None:
        state = JobState.failed
        log.info("job %s failed (%s): %s", record.id, error.code, error.message)
    canceled = env.cancels is not None and env.cancels.canceled(record.id)
    ended = JobRecord(
        **{
            **record.__dict__,
            "state": state,
            "finished": now,
            "progress": sink.progress,
            "files": files if state is JobState.succeeded else [],
            "main": writer.main if state is JobState.succeeded else None,
            "error_code": error.code if error is not None else None,
            "error": error.message if error is not None else None,
            "cancel": record.cancel or canceled or state is JobState.canceled,
            "timings": timings | ({"model_s": round(model_s, 4)} if state is JobState.succeeded else {}),
        }
    )
    return Outcome(ended, final_progress=sink.take_held())
