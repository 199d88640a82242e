"""The job-creating routes, one per entry of ``core.operations.OPERATIONS``.

Every route is the same three steps: validate (the operation's parameter model as a query or form model,
with the limits of the settings; a query parameter or form field it does not read is refused, see
``app.parameters``; its uploads decoded and checked), enqueue, answer ``202 Accepted`` with a
``Location: /jobs/{id}`` header and the job body. The handlers are plain functions, so FastAPI runs them in
its thread pool: decoding a large upload or a slow Redis never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from inspect import Parameter, Signature
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse
from rq.job import Job

from app import jobs
from app.deps import DecoderDep, IdempotencyKey, QueueDep, RedisDep, SettingsDep, require_api_key
from app.imagecheck import DecoderPool
from app.parameters import ParamError, UnknownParameters
from app.problems import invalid_params
from app.schemas import JobBody
from app.uploads import CheckedImage, check_same_size, read_image
from core.operations import OPERATIONS, Operation, OperationParams
from core.settings import Settings

PROBLEM: dict[str, Any] = {"application/problem+json": {}}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": JobBody, "description": "accepted; poll the Location header"},
    401: {"description": "missing or wrong API key", "content": PROBLEM},
    422: {
        "description": "a parameter is out of range, malformed or unknown (each named in `errors`)",
        "content": PROBLEM,
    },
    503: {"description": "the queue is full or no worker can serve this operation", "content": PROBLEM},
}
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "an upload has too many bytes or pixels", "content": PROBLEM},
    415: {"description": "an upload is not PNG, JPEG or WebP", "content": PROBLEM},
}


class Submitter:
    """What a route needs to enqueue a job (a dependency, so each route names it once)."""

    def __init__(
        self, redis: RedisDep, queue: QueueDep, settings: SettingsDep, idempotency_key: IdempotencyKey = None
    ) -> None:
        self.redis, self.queue, self.settings, self.idempotency_key = redis, queue, settings, idempotency_key

    def __call__(self, op: Operation, params: OperationParams, uploads: dict[str, bytes]) -> JSONResponse:
        job, replayed = jobs.submit(
            self.redis, self.queue, self.settings, op, params, uploads=uploads, idem_key=self.idempotency_key
        )
        return accepted(job, replayed, self.redis, self.queue)


def accepted(job: Job, replayed: bool, redis: Any, queue: Any) -> JSONResponse:
    """``202 Accepted`` with ``Location`` and the job body (``Idempotent-Replayed: true`` for a replay)."""
    body = jobs.view(job, redis, queue)
    headers = {"Location": f"/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)


def _check_uploads(
    op: Operation, files: dict[str, UploadFile], settings: Settings, decoder: DecoderPool
) -> dict[str, bytes]:
    checked: dict[str, CheckedImage] = {}
    for upload in op.uploads:
        checked[upload.name] = read_image(files[upload.name], upload.name, settings, decoder)
        if upload.same_size_as is not None:
            check_same_size(checked[upload.name], checked[upload.same_size_as])
    return {name: image.data for name, image in checked.items()}


def _handler(op: Operation, settings: Settings) -> Callable[..., JSONResponse]:
    """The route function of ``op``; its signature (read by FastAPI) is built from the operation."""
    source = Query() if op.transport == "query" else Form()

    def handler(
        params: OperationParams,
        unknown: list[ParamError],
        submit: Submitter,
        decoder: DecoderDep,
        **files: UploadFile,
    ) -> JSONResponse:
        if unknown:  # a misspelled parameter must not run the job with a default instead
            raise invalid_params(unknown)
        return submit(op, params, _check_uploads(op, files, settings, decoder) if op.uploads else {})

    parameters = [
        Parameter("params", Parameter.KEYWORD_ONLY, annotation=Annotated[op.params.bounded(settings), source]),
        Parameter("unknown", Parameter.KEYWORD_ONLY, annotation=UnknownParameters),
        Parameter("submit", Parameter.KEYWORD_ONLY, annotation=Annotated[Submitter, Depends()]),
        Parameter("decoder", Parameter.KEYWORD_ONLY, annotation=DecoderDep),
        *(
            Parameter(u.name, Parameter.KEYWORD_ONLY, annotation=Annotated[UploadFile, File(description=u.description)])
            for u in op.uploads
        ),
    ]
    handler.__signature__ = Signature(parameters, return_annotation=JSONResponse)  # type: ignore[attr-defined]
    handler.__name__ = handler.__qualname__ = op.name
    handler.__doc__ = op.params.__doc__
    return handler


def router(settings: Settings) -> APIRouter:
    """One ``POST`` route per operation, with the limits of ``settings`` in its parameter model."""
    out = APIRouter(dependencies=[Depends(require_api_key)])
    for op in OPERATIONS.values():
        out.add_api_route(
            op.path,
            _handler(op, settings),
            methods=["POST"],
            status_code=202,
            summary=op.summary,
            description=op.description or None,
            responses={**SUBMIT_RESPONSES, **(UPLOAD_RESPONSES if op.uploads else {})},
            tags=[op.tag],
            name=op.name,
            response_model=None,
        )
    return out
