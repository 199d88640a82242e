"""Job functions that fail on purpose, run by a real worker in the fault tests (named by dotted name in the job
record, as the API names the real ones)."""

from __future__ import annotations

import time

import torch

from core.operations import OperationParams
from workers.context import JobContext, job_function


@job_function(OperationParams)
def out_of_memory(job: JobContext[OperationParams]) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB in /opt/secret/path.py")


@job_function(OperationParams)
def bug(job: JobContext[OperationParams]) -> None:
    raise RuntimeError("something broke in /srv/app/secret.py")


@job_function(OperationParams)
def slow_steps(job: JobContext[OperationParams]) -> None:
    """200 steps of 50 ms with the step callback (cancel, hand-back and deadline land between two)."""
    for step in range(1, 201):
        time.sleep(0.05)
        job.progress(step, 200)
