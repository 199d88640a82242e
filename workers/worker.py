"""The no-fork RQ worker that keeps models resident, and runs several jobs at once.

`ResidentWorker` is RQ's `SimpleWorker` (jobs run in the worker process itself, so CUDA contexts
and loaded weights survive from job to job) plus a heartbeat thread while a job runs. RQ's
SimpleWorker only sets the job's liveness once, for the whole job timeout plus a minute, so a
worker killed with -9 would leave its job "running" for that long. Here the job's execution
entry is renewed every `heartbeat_s` seconds with a TTL of `dead_after_s`: when a worker dies,
another worker's maintenance pass (every `maintenance_s`) finds the job abandoned within
about `dead_after_s + maintenance_s` and RQ retries it (if it has retries left) or fails it.

With `max_inflight > 1` (BATCHING=on) the worker takes jobs from the queue while it has room and runs
each in its own thread, with its own RQ execution, heartbeat and timeout (a timer that raises in that
thread); the jobs' sampling requests meet in the worker's batcher (`workers.batcher`), which puts their
network calls into shared forwards. Everything a client sees stays per job. On a stop request the worker
takes no new job, lets the jobs in flight finish, then leaves; a worker killed with -9 leaves each of
its jobs to be retried elsewhere, as above.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC
from typing import Any

import redis.exceptions
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

log = logging.getLogger(__name__)


class ResidentWorker(SimpleWorker):
    def __init__(
        self, *args: Any, heartbeat_s: int = 5, dead_after_s: int = 30, max_inflight: int = 1, **kwargs: Any
    ) -> None:
        if dead_after_s <= heartbeat_s:
            raise ValueError("dead_after_s must exceed heartbeat_s")
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        kwargs.setdefault("worker_ttl", max(dead_after_s, 16))
        super().__init__(*args, **kwargs)
        if max_inflight > 1:  # job timeouts in job threads: a timer, not SIGALRM (main thread only)
            self.death_penalty_class = TimerDeathPenalty
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.max_inflight = max_inflight
        self._job_ended = threading.Event()
        self._beat_lock = threading.Lock()
        self._beats: dict[str, tuple[Job, Execution]] = {}
        self._beat_thread: threading.Thread | None = None

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.dead_after_s

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping, plus the start time of this attempt in the job's meta: RQ rewrites
        ``started_at`` when the job ends, so clients would see it change between two polls."""
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        if job.started_at is not None:
            job.meta["started_at"] = job.started_at.replace(tzinfo=UTC).isoformat()
            job.save_meta()

    def _heartbeats(self) -> None:
        """One thread renews the worker and the execution of every job in flight, every ``heartbeat_s``."""
        while True:
            time.sleep(self.heartbeat_s)
            with self._beat_lock:
                beats = list(self._beats.values())
            if not beats:
                continue
            try:
                with self.connection.pipeline() as pipe:
                    self.heartbeat(self.worker_ttl, pipeline=pipe)
                    for job, execution in beats:
                        execution.heartbeat(job.started_job_registry, self.dead_after_s, pipeline=pipe)
                    pipe.execute()
            except Exception:
                log.warning("heartbeat for %d job(s) failed", len(beats), exc_info=True)

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        with self._beat_lock:
            if self._beat_thread is None:
                self._beat_thread = threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True)
                self._beat_thread.start()
            self._beats[execution.id] = (job, execution)
        try:
            self.perform_job(job, queue, execution)
        finally:
            with self._beat_lock:
                self._beats.pop(execution.id, None)
        if self.max_inflight == 1:
            self.set_state(WorkerStatus.IDLE)

    # -- several jobs at once ----------------------------------------------------------------------------------
    def work(self, burst: bool = False, logging_level: str | None = None, **kwargs: Any) -> bool:  # type: ignore[override]
        """RQ's loop for one job at a time; with ``max_inflight > 1`` a loop that keeps that many in flight."""
        if self.max_inflight == 1:
            return bool(super().work(burst=burst, logging_level=logging_level, **kwargs))
        return self._work_concurrently(burst=burst, logging_level=logging_level or "INFO")

    def _run_in_thread(self, job: Job, queue: Queue) -> None:
        try:
            self.execute_job(job, queue)
        except Exception:
            log.exception("job %s: unexpected error around its execution", job.id)
        finally:
            self._job_ended.set()

    def _work_concurrently(self, *, burst: bool, logging_level: str) -> bool:
        self.bootstrap(logging_level, DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT)
        self._install_signal_handlers()  # type: ignore[no-untyped-call]
        inflight: dict[str, threading.Thread] = {}
        worked = False
        try:
            while True:
                for job_id, thread in list(inflight.items()):
                    if not thread.is_alive():
                        del inflight[job_id]
                self.set_state(WorkerStatus.BUSY if inflight else WorkerStatus.IDLE)
                if self._stop_requested:
                    break
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
                if len(inflight) >= self.max_inflight:
                    self._job_ended.wait(1.0)
                    self._job_ended.clear()
                    continue
                self.heartbeat()
                try:
                    result = self.queue_class.dequeue_any(
                        self._ordered_queues,
                        None if burst else 1,
                        connection=self.connection,
                        job_class=self.job_class,
                        serializer=self.serializer,
                        death_penalty_class=self.death_penalty_class,
                    )
                except DequeueTimeout:
                    continue
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    log.error("worker %s: Redis unreachable (%s); retrying in 1 s", self.name, exc)
                    time.sleep(1)
                    continue
                if result is None:  # burst mode, queue empty
                    if not inflight:
                        break
                    self._job_ended.wait(0.1)
                    self._job_ended.clear()
                    continue
                job, queue = result
                worked = True
                self.set_state(WorkerStatus.BUSY)
                thread = threading.Thread(
                    target=self._run_in_thread, args=(job, queue), name=f"job-{job.id}", daemon=True
                )
                inflight[job.id] = thread
                thread.start()
        except StopRequested:
            pass
        finally:
            if inflight:
                log.info("worker %s: waiting for %d job(s) in flight before stopping", self.name, len(inflight))
            for thread in inflight.values():
                thread.join()
            self.teardown()  # type: ignore[no-untyped-call]
        return worked
