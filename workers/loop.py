"""The worker's own work loop: claim, run, commit, heartbeat, recover, and stop in time.

RQ is the transport (its queue list, its job hash as the job record, its registries as the mirror of the
outcome), used through its public API and the record's scripts (``core.lifecycle``). The loop is the service's,
as vLLM and cog own theirs, because a worker with many jobs in flight needs what RQ's worker does not give:

- **claim**: with room for more jobs, it moves jobs into its held list (so a job is never only in flight in
  memory) and starts them in one round trip (``START``). Without a tenants file it blocks up to ``CLAIM_BLOCK_S``
  for the next job of the normal list (``BLMOVE``), then starts it and up to ``room - 1`` more; when the last claim
  filled its room, or a job of another priority was announced (``workers.wakeups``, which also ends a blocked
  ``BLMOVE`` at once), it takes the waiting jobs in priority order without blocking. With a tenants file it claims
  by fair share across the tenants (deficit round robin, ``core.record.START``) when a submission is announced,
  when its last claim filled its room and room opens again, and at least once every ``CLAIM_BLOCK_S`` while it has
  room;
- **run**: each job runs on one of ``max_inflight`` job threads (a fixed pool fed by a queue); its sampling
  requests meet in the batcher; its deadline is enforced between steps by the step driver; its outcome is
  committed by one script that pushes its ``done`` event. A commit that cannot reach Redis is retried with
  backoff until Redis is back (the job is held meanwhile, so nothing is lost);
- **heartbeat**: every ``heartbeat_s`` the worker renews its liveness (``dead_after_s``) and its published state;
- **recover**: every ``maintenance_s`` it looks for workers whose heartbeat expired and hands their jobs back to
  the queue (``JOB_RETRIES``) or fails them with ``worker-lost``;
- **Redis going away**: every Redis call of the loop is retried with backoff (the models stay loaded, the jobs
  in flight go on computing); when Redis is back the loop heartbeats first, then goes on;
- **stop** (SIGTERM, SIGINT): it takes no new job, lets the jobs it holds finish within ``shutdown_s``, then
  interrupts the rest between two steps and hands them back to the head of the queue, and leaves.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import stamina
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from core import logs, tracing
from core.lifecycle import Started
from core.protocol import JobState, held_key
from core.record import JobRecord, utc_now
from workers.context import Outcome, WorkerEnv, execute
from workers.telemetry import TENANT
from workers.wakeups import Wakeups

log = logging.getLogger(__name__)

CLAIM_BLOCK_S = 1.0  # longest wait for a job in one BLMOVE (also bounds how late a stop request is seen)
HANDBACK_GRACE_S = 4.0
QUEUE_WAS_BUSY_S = 0.005  # a claim answered faster than this found a job waiting: take more in the same trip  # after interrupting its jobs, how long a stopping worker waits for their hand-back
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


class JobPool:
    """``size`` daemon threads that run the tasks handed to them, in order (a queue, not a thread per job)."""

    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        for i in range(size):
            threading.Thread(target=self._loop, name=f"job-{i}", daemon=True).start()

    def submit(self, task: Callable[[], None]) -> None:
        self._queue.put(task)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on a job thread and return its result (re-raise its error). Without batching the worker
        loads its models this way, so that one thread does all the process's torch work."""
        box: list[Any] = []
        done = threading.Event()

        def task() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box.append((False, exc))
            finally:
                done.set()

        self._queue.put(task)
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            try:
                task()
            except Exception:  # a task logs and commits on its own; this is the last guard of the thread
                log.exception("a job task failed unexpectedly")


class WorkLoop:
    """One worker's loop (see the module docstring)."""

    def __init__(
        self,
        env: WorkerEnv,
        *,
        max_inflight: int,
        heartbeat_s: float,
        dead_after_s: float,
        maintenance_s: float,
        shutdown_s: float,
        describe: Callable[[], dict[str, Any]] | None = None,
        pool: JobPool | None = None,
        wakeups: Wakeups | None = None,
    ) -> None:
        if dead_after_s <= heartbeat_s:
            raise ValueError("dead_after_s must exceed heartbeat_s")
        self.env = env
        self.name = env.name
        self.lifecycle = env.lifecycle
        self.max_inflight = max_inflight
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.maintenance_s = maintenance_s
        self.shutdown_s = shutdown_s
        self.describe = describe or (lambda: {})
        self.pool = pool if pool is not None else JobPool(max_inflight)
        self._inflight: dict[str, float] = {}  # job id -> when it started (monotonic)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._stop = threading.Event()
        self._stop_now = threading.Event()
        self._next_beat = 0.0
        self._next_maintenance = 0.0
        self._maintenance_rounds = 0
        self._redis_down_since: float | None = None
        self._shutdown_deadline: float | None = None  # past it, commits stop retrying
        self.wakeups = wakeups  # announced submissions (None: without a subscription, the loop polls)
        self._backlog = False  # the last claim took all it asked for: more may wait
        self._last_claim = -1e9
        self.jobs_run = 0

    # -- control ------------------------------------------------------------------------------------------------
    def request_stop(self, *, now: bool = False) -> None:
        """Stop taking jobs; ``now``: also hand the jobs in flight back without waiting for them."""
        self._stop.set()
        if now:
            self._stop_now.set()
        self._ended.set()
        if self.wakeups is not None:
            self.wakeups.nudge()

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, *, burst: bool = False) -> int:
        """Work until a stop is requested (or, with ``burst``, until the queue is empty and nothing runs);
        returns how many jobs this worker ran."""
        self._redis(lambda: self.lifecycle.heartbeat(self.name, self.dead_after_s, self._info()), "register")
        log.info("worker %s: taking jobs from queue %r", self.name, self.lifecycle.queue.name)
        try:
            while not self._stop.is_set():
                self._upkeep()
                room = self.max_inflight - self.inflight
                if room <= 0:
                    self._ended.wait(min(self.heartbeat_s, 1.0))
                    self._ended.clear()
                    continue
                started = self._claim(room, burst=burst)
                if burst and not started and self.inflight == 0:
                    break
                if burst and not started:
                    self._ended.wait(0.05)
                    self._ended.clear()
        finally:
            self._shut_down()
        return self.jobs_run

    def _announced(self) -> bool:
        return self.wakeups is not None and self.wakeups.take()

    def _claim(self, room: int, *, burst: bool) -> list[Started]:
        if self.lifecycle.per_tenant:
            return self._claim_fair(room, burst=burst)
        try:
            if not burst and (self._backlog or self._announced()):
                # jobs may wait beyond what the last claim took, or in a list BLMOVE does not watch (high, low):
                # take them in priority order without blocking
                first, more = None, room
            else:
                began = time.monotonic()
                first = None if burst else self._block_for_a_job()
                if first is None and not burst:
                    return []
                # A claim that had to wait took the first job of a new arrival: the queue was empty a moment ago,
                # so asking for more would most likely cost a command for nothing; the loop comes back at once.
                more = room - 1 if burst or time.monotonic() - began < QUEUE_WAS_BUSY_S else 0
                more += 1 if first is None else 0
            if self._stop.is_set():
                if first is not None:  # claimed while stopping: straight back to the queue
                    self.lifecycle.redis.lmove(held_key(self.name), self.lifecycle.queue.key, "RIGHT", "LEFT")
                return []
            started, skipped = self.lifecycle.start(self.name, first, more)
            self._backlog = more > 0 and len(started) + len(skipped) - (first is not None) >= more
            self._redis_ok()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return []
        return self._took(started, skipped)

    def _block_for_a_job(self) -> str | None:
        """The next job of the normal list, waiting for it at most CLAIM_BLOCK_S; None if none came, or if a job of
        another priority (or a stop) was announced meanwhile (``Wakeups.blocking`` ends the wait then)."""
        if self.wakeups is None:
            return self.lifecycle.claim(self.name, CLAIM_BLOCK_S)
        return self.wakeups.blocking(lambda client: self.lifecycle.claim(self.name, CLAIM_BLOCK_S, client))

    def _claim_fair(self, room: int, *, burst: bool) -> list[Started]:
        """With a tenants file: claim by fair share when a job was announced, when the last claim filled its room,
        or once a poll interval has passed; otherwise wait for an announcement (at most that interval)."""
        waited = time.monotonic() - self._last_claim
        if not (burst or self._backlog or self._announced() or waited >= CLAIM_BLOCK_S):
            if self.wakeups is not None:
                self.wakeups.wait(CLAIM_BLOCK_S - waited)
            else:
                self._stop.wait(CLAIM_BLOCK_S - waited)
            return []
        self._last_claim = time.monotonic()
        if self._stop.is_set():
            return []
        try:
            started, skipped = self.lifecycle.claim_fair(self.name, room)
            self._backlog = len(started) + len(skipped) >= room
            self._redis_ok()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc)
            return []
        return self._took(started, skipped)

    def _took(self, started: list[Started], skipped: list[tuple[str, str]]) -> list[Started]:
        for job_id, state in skipped:
            if state not in ("canceled", "succeeded", "failed"):
                log.warning(
                    "job %s in the queue is not a job of this service (state %r); dropped",
                    job_id,
                    state,
                    extra=logs.about(job_id),
                )
        for job in started:
            with self._lock:
                self._inflight[job.id] = time.monotonic()
            log.info(
                "job %s (%s) started, attempt %d",
                job.id,
                job.record.kind,
                job.record.attempt,
                extra=logs.about(job.id, job.record.request_id),
            )
            self.pool.submit(lambda job=job: self._run_job(job))  # type: ignore[misc]
        return started

    def _upkeep(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.heartbeat_s
            try:
                self.lifecycle.heartbeat(self.name, self.dead_after_s, self._info())
                self._redis_ok()
            except REDIS_ERRORS as exc:
                self._redis_failed(exc)
                return
            if self.env.telemetry.metrics is not None:
                self.env.telemetry.metrics.heartbeat.set_to_current_time()
        if now >= self._next_maintenance:
            self._next_maintenance = now + self.maintenance_s * random.uniform(0.8, 1.2)
            try:
                self._recover_lost_workers()
            except REDIS_ERRORS as exc:
                self._redis_failed(exc)

    def _info(self) -> dict[str, Any]:
        inflight = self.inflight
        return {
            **self.describe(),
            "state": "busy" if inflight else "idle",
            "inflight": inflight,
            "beat": utc_now(),
            "step_s": self.env.telemetry.steps.snapshot(),  # seconds per weighted step (the pending-work gauge)
        }

    # -- Redis going away -----------------------------------------------------------------------------------------
    def _redis_failed(self, exc: BaseException) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = time.monotonic()
            log.error("worker %s: Redis unreachable (%s); retrying with backoff, models stay loaded", self.name, exc)
        down = time.monotonic() - self._redis_down_since
        self._next_beat = 0.0  # heartbeat first when it is back
        self._stop.wait(min(0.25 * 2 ** min(down, 4), 2.0))

    def _redis_ok(self) -> None:
        if self._redis_down_since is not None:
            log.info("worker %s: Redis is back after %.1f s", self.name, time.monotonic() - self._redis_down_since)
            self._redis_down_since = None

    def _redis(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` retried with backoff while Redis is unreachable (until a stop is requested)."""
        while True:
            try:
                value = call()
                self._redis_ok()
                return value
            except REDIS_ERRORS as exc:
                if self._stop_now.is_set():
                    raise
                if self._redis_down_since is None:
                    log.error("worker %s: Redis unreachable during %s (%s); retrying", self.name, what, exc)
                    self._redis_down_since = time.monotonic()
                time.sleep(min(0.25 * 2 ** min(time.monotonic() - self._redis_down_since, 4), 2.0))

    # -- one job ----------------------------------------------------------------------------------------------------
    def _run_job(self, job: Started) -> None:
        record = job.record
        try:
            # this job thread serves this one job now: its log lines carry its id, its spans join its trace, its
            # forwards count for its tenant
            TENANT.set(record.tenant)
            with (
                logs.job_context(record.id, record.request_id),
                tracing.span(
                    "job",
                    parent=record.traceparent,
                    kind="consumer",
                    attributes={"job.id": record.id, "operation": record.kind, "attempt": record.attempt},
                ),
            ):
                outcome = execute(self.env, record)
                with tracing.span("finish"):
                    self._commit(outcome)
                if outcome.handed_back:
                    self.env.telemetry.forwards.discard(record.id)
                else:
                    ended = outcome.record
                    run_s = ended.timings.get("run_s")
                    self.env.telemetry.job_ended(
                        record.kind, record.params, record.id, ended.state.value, float(run_s) if run_s else None
                    )
        finally:
            with self._lock:
                self._inflight.pop(job.id, None)
            self.jobs_run += 1
            self._ended.set()

    def _commit(self, outcome: Outcome) -> None:
        """Write the outcome to the record, retrying while Redis is unreachable (until the worker must exit)."""
        record = outcome.record
        lifecycle = self.lifecycle

        def commit() -> bool | None:
            if outcome.handed_back:
                return lifecycle.requeue(record.id, self.name, consume_retry=False) == 1
            return lifecycle.finish(
                record,
                held=held_key(self.name),
                guard=f"attempt:{record.attempt}",
                progress_event=outcome.final_progress,
            )

        try:
            for attempt in stamina.retry_context(
                on=self._retry_commit, attempts=None, timeout=None, wait_initial=0.1, wait_max=2.0
            ):
                with attempt:
                    committed = commit()
        except REDIS_ERRORS:
            log.error("job %s: its outcome could not be committed before the worker stopped", record.id)
            return
        if outcome.handed_back:
            log.info("job %s handed back to the queue", record.id)
        elif committed is None:  # deleted while it ran: remove what it stored since
            log.info("job %s was deleted while it ran; removing what it stored", record.id)
            try:
                self.env.files.delete_job(record.id)
            except Exception as exc:  # noqa: BLE001 - the store's sweep removes it later
                log.warning("job %s: could not remove its files (%s)", record.id, exc)
        elif committed:
            log.info("job %s %s", record.id, record.state.value)
        else:
            log.warning("job %s: its outcome (%s) came after another one; discarded", record.id, record.state.value)

    def _retry_commit(self, exc: Exception) -> bool:
        """Retry a commit while Redis is unreachable, unless the worker is past its stop deadline."""
        if not isinstance(exc, REDIS_ERRORS):
            return False
        if self._shutdown_deadline is not None and time.monotonic() > self._shutdown_deadline:
            return False
        log.warning("job commit: Redis unreachable (%s); retrying", exc)
        return True

    # -- lost workers -----------------------------------------------------------------------------------------------
    def _recover_lost_workers(self) -> None:
        self._maintenance_rounds += 1
        for worker in self.lifecycle.lost_workers():
            if worker == self.name:  # our own heartbeat lagged (Redis was away): renew it
                self.lifecycle.heartbeat(self.name, self.dead_after_s)
                continue
            running = self.lifecycle.recover(worker)
            if running:
                log.warning("worker %s is lost; recovering its %d running job(s)", worker, len(running))
            for job_id in running:
                handed = self.lifecycle.requeue(job_id, worker, consume_retry=True)
                if handed == 1:
                    log.warning("job %s of lost worker %s is retried", job_id, worker, extra=logs.about(job_id))
                elif handed == -1:
                    self._fail_lost(job_id, worker)
        if self._maintenance_rounds % 20 == 1:  # RQ's registries of ended jobs: drop the expired entries
            queue = self.lifecycle.queue
            FinishedJobRegistry(queue=queue).cleanup()
            FailedJobRegistry(queue=queue).cleanup()
            self.lifecycle.redis.zremrangebyscore(self.lifecycle.registry_key[JobState.canceled], "-inf", time.time())

    def _fail_lost(self, job_id: str, worker: str) -> None:
        record = self.lifecycle.read(job_id)
        if record is None:
            return
        failed = JobRecord(
            **{
                **record.__dict__,
                "state": JobState.failed,
                "finished": utc_now(),
                "error_code": "worker-lost",
                "error": "the worker running this job died; it was not retried (no retries left)",
                "files": [],
                "main": None,
            }
        )
        if self.lifecycle.finish(failed, held=held_key(worker), guard=f"worker:{worker}"):
            log.warning("job %s of lost worker %s failed: no retries left", job_id, worker, extra=logs.about(job_id))

    # -- stopping ---------------------------------------------------------------------------------------------------
    def _shut_down(self) -> None:
        deadline = time.monotonic() + (0 if self._stop_now.is_set() else self.shutdown_s)
        if self.inflight:
            log.info(
                "worker %s: stopping; waiting up to %.0f s for %d job(s)", self.name, self.shutdown_s, self.inflight
            )
        while self.inflight and time.monotonic() < deadline and not self._stop_now.is_set():
            self._upkeep_quietly()
            self._ended.wait(0.2)
            self._ended.clear()
        if self.inflight:
            log.info("worker %s: handing %d job(s) back to the queue", self.name, self.inflight)
            self.env.interrupt.set()
            self._stop_now.set()
            self._shutdown_deadline = time.monotonic() + HANDBACK_GRACE_S
            grace = time.monotonic() + HANDBACK_GRACE_S
            while self.inflight and time.monotonic() < grace:
                self._ended.wait(0.1)
                self._ended.clear()
        with self._lock:
            stuck = list(self._inflight)
        for job_id in stuck:  # still in a long operation between steps: hand it back from here
            try:
                if self.lifecycle.requeue(job_id, self.name, consume_retry=False) == 1:
                    log.warning(
                        "job %s handed back while still running (no step came in %.0f s)",
                        job_id,
                        HANDBACK_GRACE_S,
                        extra=logs.about(job_id),
                    )
            except REDIS_ERRORS as exc:
                log.error(
                    "job %s could not be handed back (%s); another worker will recover it",
                    job_id,
                    exc,
                    extra=logs.about(job_id),
                )
        try:
            self.lifecycle.leave(self.name)
        except REDIS_ERRORS as exc:
            log.warning("worker %s could not unregister (%s); its heartbeat will expire", self.name, exc)
        log.info("worker %s: stopped after %d job(s)", self.name, self.jobs_run)

    def _upkeep_quietly(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.heartbeat_s
            with contextlib.suppress(*REDIS_ERRORS):
                self.lifecycle.heartbeat(self.name, self.dead_after_s, self._info())
