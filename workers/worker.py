"""The no-fork RQ worker that keeps models resident.

`ResidentWorker` is RQ's `SimpleWorker` (jobs run in the worker process itself, so CUDA contexts
and loaded weights survive from job to job) plus a heartbeat thread while a job runs. RQ's
SimpleWorker only sets the job's liveness once, for the whole job timeout plus a minute, so a
worker killed with -9 would leave its job "running" for that long. Here the job's execution
entry is renewed every `heartbeat_s` seconds with a TTL of `dead_after_s`: when a worker dies,
another worker's maintenance pass (every `maintenance_s`) finds the job abandoned within
about `dead_after_s + maintenance_s` and RQ retries it (if it has retries left) or fails it.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC
from typing import Any

from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

log = logging.getLogger(__name__)


class ResidentWorker(SimpleWorker):
    def __init__(self, *args: Any, heartbeat_s: int = 5, dead_after_s: int = 30, **kwargs: Any) -> None:
        if dead_after_s <= heartbeat_s:
            raise ValueError("dead_after_s must exceed heartbeat_s")
        kwargs.setdefault("worker_ttl", max(dead_after_s, 16))
        super().__init__(*args, **kwargs)
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.dead_after_s

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping, plus the start time of this attempt in the job's meta: RQ rewrites
        ``started_at`` when the job ends, so clients would see it change between two polls."""
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        if job.started_at is not None:
            job.meta["started_at"] = job.started_at.replace(tzinfo=UTC).isoformat()
            job.save_meta()

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                with self.connection.pipeline() as pipe:
                    self.heartbeat(self.worker_ttl, pipeline=pipe)
                    execution.heartbeat(job.started_job_registry, self.dead_after_s, pipeline=pipe)
                    pipe.execute()
            except Exception:
                log.warning("heartbeat for job %s failed", job.id, exc_info=True)

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="job-heartbeat", daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)
