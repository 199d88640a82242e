"""Job functions that fail on purpose, run by a real worker in the fault tests."""

from __future__ import annotations

import torch

from workers.registry import get_results_dir
from workers.runtime import JobContext, run_job


def out_of_memory() -> dict:
    def body(ctx: JobContext) -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return run_job("out_of_memory", {}, body, results_dir=get_results_dir())


def bug() -> dict:
    def body(ctx: JobContext) -> dict:
        raise RuntimeError("something broke")

    return run_job("bug", {}, body, results_dir=get_results_dir())
