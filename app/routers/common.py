"""What every job-creating route shares: the 202 answer and its documented responses."""

from __future__ import annotations

import secrets

from fastapi.responses import JSONResponse
from redis import Redis
from rq import Queue
from rq.job import Job

from app import jobs
from app.schemas import JobBody

MAX_SEED = 2**63 - 1

PROBLEM = {"application/problem+json": {}}
SUBMIT_RESPONSES = {
    202: {"model": JobBody, "description": "accepted; poll the Location header"},
    401: {"description": "missing or wrong API key", "content": PROBLEM},
    422: {"description": "a parameter is out of range or malformed (named in `errors`)", "content": PROBLEM},
    503: {"description": "the queue is full or no worker can serve this operation", "content": PROBLEM},
}


def pick_seed(seed: int | None) -> int:
    """The request's seed, or a fresh random one that is recorded with the job."""
    return seed if seed is not None else secrets.randbelow(2**31)


def accepted(job: Job, replayed: bool, redis: Redis, queue: Queue) -> JSONResponse:
    body = jobs.view(job, redis, queue)
    headers = {"Location": f"/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)
