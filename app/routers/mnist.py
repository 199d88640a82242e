"""MNIST flow-matching generation."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse

from app import jobs
from app.deps import QueueDep, RedisDep, SettingsDep, require_api_key
from app.problems import invalid_param
from app.routers.common import MAX_SEED, SUBMIT_RESPONSES, accepted, pick_seed

router = APIRouter(prefix="/mnist", tags=["mnist"], dependencies=[Depends(require_api_key)])


class Sampler(str, Enum):
    euler = "euler"
    heun = "heun"


@router.post(
    "/sample",
    status_code=202,
    summary="Generate MNIST digits with the flow-matching models",
    description=(
        "With `digit`, the class-conditioned model draws `n` samples of that digit with classifier-free "
        "guidance; without it, the time-conditioned model draws `n` unguided digits. The result is one "
        "PNG grid: white digits on black, 28x28 tiles without padding, row-major, min(n, 10) columns."
    ),
    responses=SUBMIT_RESPONSES,
)
def mnist_sample(
    redis: RedisDep,
    queue: QueueDep,
    settings: SettingsDep,
    digit: Annotated[int | None, Query(ge=0, le=9, description="0..9; omit for an unguided sample", examples=[7])] = None,
    n: Annotated[int, Query(ge=1, description="how many digits (at most MAX_N, default 100)", examples=[10])] = 10,
    steps: Annotated[int, Query(ge=1, description="ODE solver steps", examples=[50])] = 50,
    guidance: Annotated[float, Query(ge=0, description="classifier-free guidance scale w (class model)", examples=[5.0])] = 5.0,
    sampler: Annotated[Sampler, Query(description="ODE solver", examples=["euler"])] = Sampler.euler,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="same seed, same PNG", examples=[42])] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    if n > settings.max_n:
        raise invalid_param("n", f"must be at most {settings.max_n}")
    if steps > settings.max_steps:
        raise invalid_param("steps", f"must be at most {settings.max_steps}")
    if guidance > settings.max_guidance:
        raise invalid_param("guidance", f"must be at most {settings.max_guidance}")
    request = {"digit": digit, "n": n, "steps": steps, "guidance": guidance, "sampler": sampler.value, "seed": seed}
    params = request | {"seed": pick_seed(seed)}
    job, replayed = jobs.submit(
        redis, queue, settings, "mnist_sample", params, idem_key=idempotency_key, request=request
    )
    return accepted(job, replayed, redis, queue)
