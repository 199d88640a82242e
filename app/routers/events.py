"""Live job events (Server-Sent Events) and the previews they announce."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from app import jobs
from app.deps import CallerDep, LifecycleDep, RecordsDep, SettingsDep, StoreDep, require_api_key
from app.downloads import store_response
from app.events import EventHub
from app.problems import Problem
from app.routers.jobs import JobId, Redirect
from core import events
from core.store import StoreNotFound

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

PROBLEM: dict[str, Any] = {"application/problem+json": {}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong API key", "content": PROBLEM},
    404: {"description": "no such job", "content": PROBLEM},
    410: {"description": "the job expired and its results were deleted", "content": PROBLEM},
}
EVENTS_DESCRIPTION = """
A `text/event-stream` of the job's events, each with its `id` (the position in the job's stream),
`event` name and JSON `data`:

| event | data |
| --- | --- |
| `status` | `{"status": "queued"}` or `{"status": "running", "attempt": 1}` |
| `queue` | `{"position": 0, "eta_s": 1.2}` while queued (0 = next: the jobs admitted before it under the fair share; `eta_s`: the estimated seconds until it ends); sent without an id |
| `progress` | `{"step": 12, "total": 34, "stage": "I"}` (`stage` for DeepFloyd: I, or II for the upscale) |
| `preview` | `{"step": 10, "total": 34, "stage": "I", "name": "I-0010.png", "url": "/jobs/{id}/previews/I-0010.png"}` (jobs submitted with `previews=true`) |
| `done` | the job as `GET /jobs/{id}` shows it: `status` succeeded, failed or canceled, `results`, `result_url`, `error`, `error_code` |

Every job gets exactly one `done` event, last, and the stream ends after it. Send `Last-Event-ID` (as
EventSource does when it reconnects) to resume after that event without losing or repeating any.
Keep-alive comments come every `EVENTS_KEEPALIVE_S` seconds.
"""


@router.get(
    "/{job_id}/events",
    summary="Follow a job: status, progress, previews, and the outcome (Server-Sent Events)",
    description=EVENTS_DESCRIPTION,
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the job's events until it is finished"},
        **_ERRORS,
        422: {"description": "a malformed Last-Event-ID", "content": PROBLEM},
        503: {"description": "Redis is unreachable or too many streams are open", "content": PROBLEM},
    },
)
async def job_events(
    job_id: JobId,
    request: Request,
    lifecycle: LifecycleDep,
    settings: SettingsDep,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="resume after this event id",
            examples=["1767225600000-0"],
            pattern=events.STREAM_ID_RE.pattern,
        ),
    ] = None,
) -> EventSourceResponse:
    hub: EventHub = request.app.state.events
    if hub.count >= settings.events_max_listeners:
        raise Problem(
            503, "too-many-listeners", "too many event streams are open; retry later", headers={"Retry-After": "5"}
        )
    await run_in_threadpool(partial(jobs.fetch, lifecycle, job_id, owner=caller.owner))  # 404 / 410
    if not await hub.ready():
        raise Problem(
            503,
            "queue-unavailable",
            "the job queue (Redis) is unreachable; retry shortly",
            headers={"Retry-After": "5"},
        )
    listener = hub.add(job_id)  # before the first look-up: any event published from here on reaches it
    try:
        first = await hub.check(job_id)
    except BaseException:
        hub.remove(listener)
        raise
    return EventSourceResponse(
        hub.stream(listener, last_event_id, first),
        ping=settings.events_keepalive_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


PreviewName = Annotated[str, Path(description="a name from a `preview` event", examples=["I-0010.png"])]


@router.get(
    "/{job_id}/previews/{name}",
    summary="Download a preview (also while the job runs)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the PNG"},
        **_ERRORS,
        503: {"description": "the result store is unreachable (`Retry-After`)", "content": PROBLEM},
    },
)
@router.head("/{job_id}/previews/{name}", include_in_schema=False)
async def get_preview(
    request: Request,
    job_id: JobId,
    name: PreviewName,
    records: RecordsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    redirect: Redirect = None,
) -> Response:
    record, _ = await jobs.fetch_async(records, job_id, owner=caller.owner)
    if not events.PREVIEW_NAME_RE.fullmatch(name):
        raise Problem(404, "file-not-found", f"job {job_id} has no preview {name!r}")
    try:
        return await store_response(
            store,
            record.files_of,
            f"{events.PREVIEWS}/{name}",
            request,
            media_type="image/png",
            redirect=settings.results_redirect and redirect is not False,
            presign_expiry_s=settings.results_presign_expiry_s,
        )
    except StoreNotFound:
        raise Problem(404, "file-not-found", f"job {job_id} has no preview {name!r}") from None
