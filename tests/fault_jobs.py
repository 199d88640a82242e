"""Job functions that fail on purpose, run by a real worker in the fault tests."""

from __future__ import annotations

from typing import Any

import torch

from core.operations import OperationParams
from workers.frame import job_frame


def out_of_memory(params: dict[str, Any] | None = None) -> dict[str, Any]:
    with job_frame(OperationParams, params or {}, kind="out_of_memory") as job:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return job.result


def bug(params: dict[str, Any] | None = None) -> dict[str, Any]:
    with job_frame(OperationParams, params or {}, kind="bug") as job:
        raise RuntimeError("something broke")
    return job.result
