"""The progress sink of a job: its progress events, its previews and the frames of its trajectory.

The step callback (``JobContext.progress``) may run on a thread other than the job's (the batcher steps every
job in flight): it only records progress, copies the preview estimate to the CPU and enqueues the work. Redis
writes, PNG encoding and preview uploads happen on one background thread per worker process
(``EventPublisher``), in submission order, and never raise into the sampler.

Rules:
- ``progress`` events at most every ``PROGRESS_EVENT_INTERVAL_S``; the progress of a last step (``step ==
  total``) is held back and sent just before whatever comes next: the next event, or the job's ``done`` (its
  ``FINISH`` script appends it), so that a one-step job costs one script call, not two;
- with ``previews=true`` a ``preview`` every ``PREVIEW_EVERY`` steps and at the last one: a small PNG of the
  step's clean-image estimate under ``previews/`` (x0_hat for DeepFloyd, the clamped sample for MNIST);
- with ``trajectory=true`` the same frames are kept for ``trajectory.gif`` and ``trajectory.png``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from redis.exceptions import RedisError

from core import events, logs
from core.lifecycle import Lifecycle
from models import imageio

log = logging.getLogger(__name__)

PROGRESS_EVENT_INTERVAL_S = 0.1
PREVIEW_MIN_SIDE = 112  # smaller estimates (28x28 MNIST digits) are upscaled with nearest neighbours
FLUSH_TIMEOUT_S = 5.0
REDIS_DOWN_SKIP_S = 1.0  # after a failed Redis write, progress events are dropped this long (not queued up)


class EventPublisher:
    """One background thread per worker process that runs the event and preview tasks of every job in the order
    they were submitted. A step callback only enqueues; a full queue drops the task (a progress event or a
    preview: the next one supersedes it) instead of holding up the sampler. While Redis is unreachable, tasks
    marked ``droppable`` are skipped for ``REDIS_DOWN_SKIP_S`` after each failure, so that an outage does not
    queue up thousands of writes that each wait for a connect timeout."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._queue: queue.Queue[tuple[Callable[[], None], bool, str | None]] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self.dropped = 0

    def submit(self, task: Callable[[], None], *, droppable: bool = True, job_id: str | None = None) -> bool:
        """Queue ``task`` (about ``job_id``, named in the log line if it fails); False if the queue was full."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="job-events", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((task, droppable, job_id))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every task submitted before this call has run (at most ``timeout`` seconds)."""
        done = threading.Event()
        if not self.submit(done.set, droppable=False):
            return False
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            task, droppable, job_id = self._queue.get()
            if droppable and time.monotonic() < self._down_until:
                self.dropped += 1
                continue
            about = logs.about(job_id) if job_id else None  # this thread serves every job: name it explicitly
            try:
                task()
            except RedisError as exc:
                self._down_until = time.monotonic() + REDIS_DOWN_SKIP_S
                log.warning("a job event could not be published: %s", exc, extra=about)
            except Exception:  # an event lost must never stop the ones after it
                log.warning("a job event could not be published", exc_info=True, extra=about)


PUBLISHER = EventPublisher()


class ProgressSink:
    """Progress, previews and trajectory frames of one attempt of one job (see the module docstring).

    Args:
        job_id, attempt: the job and the attempt whose events these are (a stale attempt's are refused).
        lifecycle: appends the events (``core.lifecycle.Lifecycle.event``).
        put_preview: stores a preview PNG under ``previews/<name>`` (the job's result writer).
        value_range: the range of the job's image tensors.
        preview_every: steps between two previews or trajectory frames.
        previews, trajectory: what the request asked for.
    """

    def __init__(
        self,
        job_id: str,
        attempt: int,
        lifecycle: Lifecycle,
        put_preview: Callable[[str, bytes], None],
        *,
        value_range: tuple[float, float],
        preview_every: int,
        previews: bool,
        trajectory: bool,
        publisher: EventPublisher = PUBLISHER,
    ) -> None:
        self.job_id, self.attempt = job_id, attempt
        self._lifecycle = lifecycle
        self._put_preview = put_preview
        self._value_range = value_range
        self._every = preview_every
        self._previews, self._trajectory = previews, trajectory
        self._publisher = publisher
        self._lock = threading.Lock()
        self._last_event = 0.0
        self._held: dict[str, Any] | None = None  # a last step's progress, sent with what comes next
        self.progress: dict[str, Any] | None = None
        self.frames: list[torch.Tensor] = []  # uint8 (C, H, W) estimates for the trajectory
        self._failed = False
        self._submitted = 0  # tasks this job handed to the publisher (none: nothing to flush)

    def report(self, step: int, total: int, preview: torch.Tensor | None, stage: str | None) -> None:
        """Record one step (any thread); never raises."""
        try:
            with self._lock:
                self._report(int(step), int(total), preview, stage)
        except Exception:  # progress reporting must never fail the job
            if not self._failed:
                self._failed = True
                log.warning(
                    "progress of job %s could not be reported",
                    self.job_id,
                    exc_info=True,
                    extra=logs.about(self.job_id),
                )

    def _report(self, step: int, total: int, preview: torch.Tensor | None, stage: str | None) -> None:
        now = time.monotonic()
        progress = {"step": step, "total": total} | ({"stage": stage} if stage else {})
        self.progress = progress
        last = step >= total
        if last:
            earlier, self._held = self._held, None
            if earlier is not None:  # an earlier stage's last step: send it first
                self._emit("progress", earlier, earlier)
            self._held = progress
        elif now - self._last_event >= PROGRESS_EVENT_INTERVAL_S:
            self._last_event = now
            self._emit("progress", progress, progress)
        if preview is None or not (self._previews or self._trajectory) or not (last or step % self._every == 0):
            return
        frame = self._to_uint8(preview[0])
        if self._trajectory:
            self.frames.append(frame)
        if self._previews:
            self._send_preview(frame, step, total, stage)

    def take_held(self) -> dict[str, Any] | None:
        """The held-back last-step progress (for the job's ``done``), once."""
        with self._lock:
            held, self._held = self._held, None
            return held

    def _emit(self, event: str, data: dict[str, Any], progress: dict[str, Any] | None) -> None:
        job_id, attempt, lifecycle = self.job_id, self.attempt, self._lifecycle
        held, self._held = self._held, None

        def send() -> None:
            if held is not None:
                lifecycle.event(job_id, attempt, "progress", held, progress=held)
            lifecycle.event(job_id, attempt, event, data, progress=progress)

        self._submitted += 1
        self._publisher.submit(send, job_id=job_id)

    def _to_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) in the operation's value range -> uint8 (C, H, W) on the CPU (a small copy)."""
        lo, hi = self._value_range
        x = image.detach().to("cpu", torch.float32, copy=True)
        return ((x - lo) / (hi - lo)).clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    def _send_preview(self, frame: torch.Tensor, step: int, total: int, stage: str | None) -> None:
        job_id, attempt, lifecycle, put = self.job_id, self.attempt, self._lifecycle, self._put_preview
        name = events.preview_name(step, stage)
        data = {"step": step, "total": total} | ({"stage": stage} if stage else {})
        data |= {"name": name, "url": events.preview_url(job_id, name)}
        held, self._held = self._held, None

        def send() -> None:
            scale = max(1, PREVIEW_MIN_SIDE // max(frame.shape[-2:]))
            put(name, imageio.png_bytes(frame, value_range=(0.0, 255.0), scale=scale))
            if held is not None:
                lifecycle.event(job_id, attempt, "progress", held, progress=held)
            lifecycle.event(job_id, attempt, "preview", data, progress=None)

        self._submitted += 1
        self._publisher.submit(send, droppable=False, job_id=job_id)

    def flush(self) -> None:
        """Wait until this process's queued events and previews have been sent (bounded); at once when this job
        queued none (a one-step job: its only progress rides with its done)."""
        if not self._submitted:
            return
        if not self._publisher.flush():
            log.warning(
                "the events of job %s were not all sent within %.0fs",
                self.job_id,
                FLUSH_TIMEOUT_S,
                extra=logs.about(self.job_id),
            )
