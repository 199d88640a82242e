"""Job status polling, result download, cancellation and deletion."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from app import jobs
from app.deps import CallerDep, LifecycleDep, RecordsDep, SettingsDep, StoreDep, require_api_key
from app.downloads import store_response
from app.problems import Problem
from app.schemas import JobBody
from core.lifecycle import AsyncRecords
from core.settings import Settings
from core.store import FILE_NAME_RE, ResultStore, StoreNotFound, is_job_id

JobId = Annotated[
    str, Path(description="the job id from the 202 answer", examples=["3f0c2a9b8e7d4c6a9b1e2f3a4b5c6d7e"])
]
FileName = Annotated[str, Path(description="a name from the job's `results`", examples=["samples.png"])]
Redirect = Annotated[
    bool | None,
    Query(
        description="`false`: stream the file through the API even with RESULTS_REDIRECT=true (for a page whose "
        "security policy allows only its own origin, such as the studio)",
        examples=[False],
    ),
]

_MEDIA_TYPES = {".png": "image/png", ".json": "application/json", ".gif": "image/gif"}

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

PROBLEM: dict[str, Any] = {"application/problem+json": {}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job", "content": PROBLEM},
    410: {"description": "the job expired (or was deleted) with its results", "content": PROBLEM},
}


@router.get("/{job_id}", response_model=JobBody, summary="Poll a job", responses=_ERRORS)
async def get_job(
    job_id: JobId, records: RecordsDep, caller: CallerDep, lifecycle: LifecycleDep, settings: SettingsDep
) -> JSONResponse:
    record, position = await jobs.fetch_async(records, job_id, owner=caller.owner)
    eta = None
    if position is not None:
        eta = jobs.eta_s(await jobs.recent_workers_async(lifecycle), record, position, settings.pending_step_s_default)
    return JSONResponse(record.body(position, eta))


def _media_type(name: str) -> str:
    return _MEDIA_TYPES.get("." + name.rpartition(".")[2], "application/octet-stream")


async def _file(
    request: Request,
    settings: Settings,
    records: AsyncRecords,
    store: ResultStore,
    job_id: str,
    name: str | None,
    redirect: bool | None,
    owner: str | None,
) -> Response:
    if not is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    found = await records.read(job_id)  # one HMGET; the 404 or 410 only when it is gone
    record = (
        jobs.check_owner(found, owner)
        if found is not None
        else (await jobs.fetch_async(records, job_id, owner=owner))[0]
    )
    if record.state.value != "succeeded":
        raise Problem(
            409, "job-not-succeeded", f"job {job_id} is {record.state.value}; results exist only once it succeeded"
        )
    name = name if name is not None else record.main
    if not name:
        raise Problem(404, "no-result", f"job {job_id} has no main result")
    if name not in record.files or not FILE_NAME_RE.fullmatch(name):
        raise Problem(404, "file-not-found", f"job {job_id} has no result file {name!r}")
    try:
        return await store_response(
            store,
            record.files_of,  # a job answered from the result cache shows its source's objects
            name,
            request,
            media_type=_media_type(name),
            redirect=settings.results_redirect and redirect is not False,
            presign_expiry_s=settings.results_presign_expiry_s,
        )
    except StoreNotFound:
        raise Problem(410, "result-expired", f"the result files of job {job_id} were deleted") from None


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the PNG"},
    206: {"description": "the requested byte range (`Range: bytes=a-b`)"},
    304: {"description": "not modified (`If-None-Match`, `If-Modified-Since`)"},
    307: {"description": "with RESULTS_REDIRECT=true: a presigned URL on the object store"},
    409: {"description": "the job has not succeeded", "content": PROBLEM},
    503: {"description": "the result store is unreachable (`Retry-After`)", "content": PROBLEM},
    **_ERRORS,
}


@router.get("/{job_id}/result", summary="Download the main PNG", response_class=Response, responses=_FILE_RESPONSES)
@router.head("/{job_id}/result", include_in_schema=False)
async def get_result(
    request: Request,
    job_id: JobId,
    records: RecordsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    redirect: Redirect = None,
) -> Response:
    return await _file(request, settings, records, store, job_id, None, redirect, caller.owner)


@router.get(
    "/{job_id}/files/{name}", summary="Download one result file", response_class=Response, responses=_FILE_RESPONSES
)
@router.head("/{job_id}/files/{name}", include_in_schema=False)
async def get_file(
    request: Request,
    job_id: JobId,
    name: FileName,
    records: RecordsDep,
    store: StoreDep,
    settings: SettingsDep,
    caller: CallerDep,
    redirect: Redirect = None,
) -> Response:
    return await _file(request, settings, records, store, job_id, name, redirect, caller.owner)


@router.post(
    "/{job_id}/cancel",
    response_model=JobBody,
    status_code=202,
    summary="Cancel a queued or running job",
    responses={409: {"description": "already finished", "content": PROBLEM}, **_ERRORS},
)
def cancel_job(job_id: JobId, lifecycle: LifecycleDep, caller: CallerDep) -> JSONResponse:
    record, _ = jobs.fetch(lifecycle, job_id, owner=caller.owner)
    jobs.cancel(lifecycle, record)
    record, position = jobs.fetch(lifecycle, job_id, owner=caller.owner)
    return JSONResponse(record.body(position), status_code=202)


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a job: cancel it if it still runs, and remove its results and uploads everywhere",
    response_class=Response,
    responses={
        204: {"description": "deleted; the job now answers 410"},
        503: {"description": "the result store is unreachable: nothing was deleted, retry", "content": PROBLEM},
        **_ERRORS,
    },
)
def delete_job(job_id: JobId, lifecycle: LifecycleDep, store: StoreDep, caller: CallerDep) -> Response:
    record, _ = jobs.fetch(lifecycle, job_id, owner=caller.owner)
    jobs.delete(lifecycle, store, record)
    return Response(status_code=204)
