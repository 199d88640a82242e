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

Live events (``core.events``): the frame publishes ``status: running`` when it opens, ``progress`` from the
step callback (at most every 0.1 s, and the last step), and with ``previews=true`` a ``preview`` every
PREVIEW_EVERY steps: a small PNG of the step's clean-image estimate (x0_hat for DeepFloyd, the clamped sample
for MNIST) in ``previews/``. With ``trajectory=true`` the same frames become ``trajectory.gif`` and
``trajectory.png`` (a strip) in the results. When the frame closes it tells the API processes that the
worker left the job; they publish the terminal ``done`` event once RQ has recorded the job's real status.

The step callback may run on a thread other than the job's (a batching driver that steps several jobs):
it only checks the cancel flag, records progress and copies the preview to the CPU; Redis writes, PNG
encoding and file writes happen on one background thread per process (``EventPublisher``), in order. It
never raises into the sampler except ``JobCanceled``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from redis import Redis
from rq import get_current_job
from rq.job import Job

from core import events, storage
from core.operations import OPERATIONS, OperationParams
from core.protocol import JobCanceled, JobState, cancel_key
from models import imageio
from models.driver import Runner
from workers.cancellation import CancelWatch
from workers.registry import ModelRegistry, get_cancels, get_registry, get_runner, get_settings

log = logging.getLogger(__name__)

PROGRESS_MIN_INTERVAL_S = 0.05
PROGRESS_EVENT_INTERVAL_S = 0.1
PREVIEW_MIN_SIDE = 112  # smaller estimates (28x28 MNIST digits) are upscaled with nearest neighbours
TRAJECTORY_MAX_FRAMES = 100  # evenly spaced, first and last included
FLUSH_TIMEOUT_S = 5.0
P = TypeVar("P", bound=OperationParams)

_KIND_OF = {op.params: op.name for op in OPERATIONS.values()}
_RANGE_OF = {op.name: op.value_range for op in OPERATIONS.values()}


class EventPublisher:
    """One background thread per worker process that runs the event and preview tasks of every job frame in
    the order they were submitted. A step callback only enqueues; a full queue drops the task (a progress
    event or a preview: the next one supersedes it) instead of holding up the sampler."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def submit(self, task: Callable[[], None]) -> bool:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="job-events", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every task submitted before this call has run (at most ``timeout`` seconds)."""
        done = threading.Event()
        if not self.submit(done.set):
            return False
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                task()
            except Exception:  # an event lost must never stop the ones after it
                log.warning("a job event could not be published", exc_info=True)


_PUBLISHER = EventPublisher()


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
        self._last_event = 0.0
        self._t0 = 0.0
        self._started = 0.0
        self._cancels: CancelWatch | None = None
        self._publisher = _PUBLISHER
        self._lock = threading.Lock()  # the step callback may run on another thread than the job body
        self._value_range = _RANGE_OF.get(self.kind, (-1.0, 1.0))
        self._previews = self._trajectory = False
        self._frames: list[torch.Tensor] = []  # uint8 (C, H, W) estimates for the trajectory
        self._report_failed = False

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
        self._emit("status", {"status": JobState.running.value, "attempt": job.meta["attempts"]})
        try:
            self.params: P = self._model.bounded(self._settings).model_validate(self._raw)
        except ValidationError as exc:
            self._fail(f"invalid request: {_validation_message(exc)}")
            self._left()
            raise
        self._previews, self._trajectory = self.params.previews, self.params.trajectory
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._cancels is not None and self.job is not None:
            self._cancels.unwatch(self.job.id)
        try:
            return self._exit(exc)
        finally:
            self._left()

    def _exit(self, exc: BaseException | None) -> bool:
        # progress writes queued on the background thread land before the final meta writes below
        self._publisher.flush()
        if exc is None:
            try:
                self._write_trajectory()
            except Exception as err:
                self._fail(f"could not write the trajectory: {type(err).__name__}: {err}")
                raise
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

    def progress(
        self, step: int, total: int, x: Any = None, preview: torch.Tensor | None = None, *, stage: str | None = None
    ) -> None:
        """Per-step callback for the samplers, ``callback(step, total, x, preview)``: records progress, publishes
        it (and, when asked for, a preview of ``preview``, the step's clean-image estimate (B, C, H, W) in the
        operation's value range); raises JobCanceled on cancel and nothing else."""
        self.check_canceled()
        try:
            with self._lock:
                self._report(int(step), int(total), preview, stage)
        except Exception:  # progress reporting must never fail the job
            if not self._report_failed:
                self._report_failed = True
                log.warning("progress of job %s could not be reported", self.job.id if self.job else "?", exc_info=True)

    def stage_progress(self, stage: str) -> Callable[..., None]:
        """The callback for one stage of a multi-stage job (progress carries the stage name)."""
        return lambda step, total, *rest: self.progress(step, total, *rest, stage=stage)

    def _report(self, step: int, total: int, preview: torch.Tensor | None, stage: str | None) -> None:
        assert self.job is not None
        now = time.monotonic()
        last = step >= total
        if last or now - self._last_progress >= PROGRESS_MIN_INTERVAL_S:
            self._last_progress = now
            progress = {"step": step, "total": total} | ({"stage": stage} if stage else {})
            self.job.meta["progress"] = progress
            self._save_meta_later()
            if last or now - self._last_event >= PROGRESS_EVENT_INTERVAL_S:
                self._last_event = now
                self._emit("progress", progress)
        every = self._settings.preview_every
        if preview is None or not (self._previews or self._trajectory) or not (last or step % every == 0):
            return
        frame = self._to_uint8(preview[0])
        if self._trajectory:
            self._frames.append(frame)
        if self._previews:
            self._send_preview(frame, step, total, stage)

    def _save_meta_later(self) -> None:
        """``job.save_meta()`` on the background thread: the step callback may run on the batcher's thread,
        where a Redis round trip per job and step would hold up every job in the batch. The meta is serialized
        now, so the write stores this step's progress; ``_exit`` flushes before the final writes."""
        job = self.job
        assert job is not None
        key, data, redis = job.key, job.serializer.dumps(job.meta), self.redis

        def write() -> None:
            redis.hset(key, "meta", data)

        self._publisher.submit(write)

    def _to_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) in the operation's value range -> uint8 (C, H, W) on the CPU (a small copy)."""
        lo, hi = self._value_range
        x = image.detach().to("cpu", torch.float32, copy=True)
        return ((x - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    def _send_preview(self, frame: torch.Tensor, step: int, total: int, stage: str | None) -> None:
        assert self.job is not None
        job_id, redis, ttl = self.job.id, self.redis, self._settings.result_ttl_s
        name = events.preview_name(step, stage)
        path = self.folder / events.PREVIEWS / name
        data = {"step": step, "total": total} | ({"stage": stage} if stage else {})
        data |= {"name": name, "url": events.preview_url(job_id, name)}

        def send() -> None:
            scale = max(1, PREVIEW_MIN_SIDE // max(frame.shape[-2:]))
            storage.write_bytes_atomic(path, imageio.png_bytes(frame, value_range=(0.0, 255.0), scale=scale))
            events.publish(redis, job_id, "preview", data, ttl_s=ttl)

        self._publisher.submit(send)

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        """Publish one event of this job from the background thread (in order, never raising here)."""
        assert self.job is not None
        job_id, redis, ttl = self.job.id, self.redis, self._settings.result_ttl_s

        def send() -> None:
            events.publish(redis, job_id, event, data, ttl_s=ttl)

        self._publisher.submit(send)

    def _left(self) -> None:
        """After the job body: the events in flight are sent, then the API processes are told (they publish
        the terminal event once RQ has stored the job's status)."""
        assert self.job is not None
        if not self._publisher.flush():
            log.warning("the events of job %s were not all sent within %.0fs", self.job.id, FLUSH_TIMEOUT_S)
        try:
            events.notify_ended(self.redis, self.job.id)
        except Exception:  # the API reconciles on its own within EVENTS_KEEPALIVE_S
            log.warning("could not announce the end of job %s", self.job.id, exc_info=True)

    def _write_trajectory(self) -> None:
        """``trajectory.gif`` and ``trajectory.png`` (a strip of at most 10) from the preview frames; frames of
        a smaller stage are upscaled (nearest) to the largest, so stage I and stage II play as one film."""
        with self._lock:
            frames = list(self._frames)
        if not self._trajectory or not frames:
            return
        if len(frames) > TRAJECTORY_MAX_FRAMES:
            picks = torch.linspace(0, len(frames) - 1, TRAJECTORY_MAX_FRAMES).round().long().tolist()
            frames = [frames[i] for i in picks]
        height, width = max((f.shape[-2], f.shape[-1]) for f in frames)
        frames = [
            f if f.shape[-2:] == (height, width) else F.interpolate(f[None], size=(height, width), mode="nearest")[0]
            for f in frames
        ]
        scale = max(1, PREVIEW_MIN_SIDE // max(height, width))
        u8 = (0.0, 255.0)
        self.save("trajectory.gif", imageio.gif_bytes(frames, value_range=u8, scale=scale), frames=len(frames))
        self.save("trajectory.png", imageio.png_bytes(imageio.strip(frames), value_range=u8, scale=scale))

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
