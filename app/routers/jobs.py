"""Job status polling, result download and cancellation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse, JSONResponse

from app import jobs
from app.deps import LifecycleDep, SettingsDep, require_api_key
from app.problems import Problem
from app.schemas import JobBody
from core import storage
from core.lifecycle import Lifecycle
from core.settings import Settings

JobId = Annotated[
    str, Path(description="the job id from the 202 answer", examples=["3f0c2a9b8e7d4c6a9b1e2f3a4b5c6d7e"])
]
FileName = Annotated[str, Path(description="a name from the job's `results`", examples=["samples.png"])]

_MEDIA_TYPES = {".png": "image/png", ".json": "application/json", ".gif": "image/gif"}

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job", "content": {"application/problem+json": {}}},
    410: {"description": "the job expired and its results were deleted", "content": {"application/problem+json": {}}},
}


@router.get("/{job_id}", response_model=JobBody, summary="Poll a job", responses=_ERRORS)
def get_job(job_id: JobId, lifecycle: LifecycleDep) -> JSONResponse:
    record, position = jobs.fetch(lifecycle, job_id)
    return JSONResponse(record.body(position))


def _file(settings: Settings, lifecycle: Lifecycle, job_id: str, name: str | None) -> FileResponse:
    if not storage.is_job_id(job_id):
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")
    record = lifecycle.read(job_id)
    if record is None:
        jobs.fetch(lifecycle, job_id)  # 404 or 410
        raise Problem(404, "job-not-found", f"no job with id {job_id!r}")  # pragma: no cover - a race
    if record.state.value != "succeeded":
        raise Problem(
            409, "job-not-succeeded", f"job {job_id} is {record.state.value}; results exist only once it succeeded"
        )
    name = name if name is not None else record.main
    if not name:
        raise Problem(404, "no-result", f"job {job_id} has no main result")
    if name not in record.files or not storage.FILE_NAME_RE.fullmatch(name):
        raise Problem(404, "file-not-found", f"job {job_id} has no result file {name!r}")
    path = storage.job_dir(settings.results_dir, job_id) / name
    if not path.is_file():
        raise Problem(410, "result-expired", f"the result files of job {job_id} were deleted")
    media = _MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "the PNG"},
    409: {"description": "the job has not succeeded", "content": {"application/problem+json": {}}},
    **_ERRORS,
}


@router.get("/{job_id}/result", summary="Download the main PNG", response_class=FileResponse, responses=_FILE_RESPONSES)
@router.head("/{job_id}/result", include_in_schema=False)
def get_result(job_id: JobId, lifecycle: LifecycleDep, settings: SettingsDep) -> FileResponse:
    return _file(settings, lifecycle, job_id, None)


@router.get(
    "/{job_id}/files/{name}", summary="Download one result file", response_class=FileResponse, responses=_FILE_RESPONSES
)
@router.head("/{job_id}/files/{name}", include_in_schema=False)
def get_file(job_id: JobId, name: FileName, lifecycle: LifecycleDep, settings: SettingsDep) -> FileResponse:
    return _file(settings, lifecycle, job_id, name)


@router.post(
    "/{job_id}/cancel",
    response_model=JobBody,
    status_code=202,
    summary="Cancel a queued or running job",
    responses={409: {"description": "already finished", "content": {"application/problem+json": {}}}, **_ERRORS},
)
def cancel_job(job_id: JobId, lifecycle: LifecycleDep) -> JSONResponse:
    record, _ = jobs.fetch(lifecycle, job_id)
    jobs.cancel(lifecycle, record)
    record, position = jobs.fetch(lifecycle, job_id)
    return JSONResponse(record.body(position), status_code=202)
