"""``POST /jobs/{id}/webhook/redeliver``: send the ``completed`` webhook of an ended job again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app import jobs, webhooks
from app.deps import CallerDep, LifecycleDep, SettingsDep, require_api_key
from app.problems import Problem
from app.routers.jobs import JobId
from app.schemas import JobBody

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

PROBLEM: dict[str, Any] = {"application/problem+json": {}}


@router.post(
    "/{job_id}/webhook/redeliver",
    response_model=JobBody,
    status_code=202,
    summary="Send the job's completed webhook again",
    description="Queues the `completed` delivery of an ended job again, now, with a new retry window: the same "
    "body (the job as its end left it) and the same `webhook-id` (it is the same message, so a receiver that "
    "has it already may drop it). The job body's `webhook.state` is `pending` until it is delivered or fails.",
    responses={
        401: {"description": "missing or wrong API key", "content": PROBLEM},
        404: {"description": "no such job", "content": PROBLEM},
        409: {"description": "the job has no webhook, or has not ended", "content": PROBLEM},
        410: {"description": "the job expired", "content": PROBLEM},
        503: {"description": "webhooks are not configured (no WEBHOOK_SECRET)", "content": PROBLEM},
    },
)
def redeliver_webhook(job_id: JobId, lifecycle: LifecycleDep, settings: SettingsDep, caller: CallerDep) -> JSONResponse:
    record, _ = jobs.fetch(lifecycle, job_id, owner=caller.owner)
    if not record.webhook:
        raise Problem(409, "no-webhook", f"job {job_id} was submitted without a webhook")
    if not record.state.terminal:
        raise Problem(409, "job-not-finished", f"job {job_id} is {record.state.value}; it has no completed event yet")
    if settings.webhook_secret is None:
        raise Problem(503, "webhooks-unavailable", "this service has no WEBHOOK_SECRET, so it cannot sign webhooks")
    if not webhooks.redeliver(lifecycle.redis, record):
        jobs.fetch(lifecycle, job_id, owner=caller.owner)  # 404 or 410: it expired meanwhile
    record, position = jobs.fetch(lifecycle, job_id, owner=caller.owner)
    return JSONResponse(record.body(position), status_code=202)
