"""The job-creating routes, one per entry of ``core.operations.OPERATIONS``.

Every route is the same three steps: validate (the operation's parameter model as a query or form model,
with the limits of the settings; a query parameter or form field it does not read is refused, see
``app.parameters``; its uploads decoded and checked), enqueue, answer ``202 Accepted`` with a
``Location: /jobs/{id}`` header and the job body. With ``Prefer: wait=N`` (RFC 7240) the answer waits up to N
seconds (at most WAIT_MAX_S) for the job's pushed ``done`` event and is ``200 OK`` with the final job body and
``Preference-Applied: wait=N`` when the job ended in time. A request answered from the result cache is a succeeded
job at once. A tenant with a ``rate`` gets the ``RateLimit`` and ``RateLimit-Policy`` headers on every answer.
Upload checks and Redis calls run in the thread pool: decoding a large upload or a slow Redis never blocks the
event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from inspect import Parameter, Signature
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app import jobs
from app.deps import (
    Caller,
    CallerDep,
    DecoderDep,
    DepthDep,
    IdempotencyKey,
    LifecycleDep,
    SettingsDep,
    StoreDep,
    require_api_key,
)
from app.events import EventHub
from app.imagecheck import DecoderPool
from app.jobs import QueueDepth
from app.metrics import ApiMetrics, JobMeter
from app.parameters import ParamError, UnknownParameters
from app.problems import invalid_params
from app.quotas import Quotas
from app.schemas import JobBody
from app.uploads import CheckedImage, check_same_size, read_image
from core import tracing
from core.lifecycle import Lifecycle
from core.operations import OPERATIONS, Operation, OperationParams
from core.settings import Settings
from core.store import ResultStore

PROBLEM: dict[str, Any] = {"application/problem+json": {}}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": JobBody, "description": "with `Prefer: wait=N`: the job ended within N seconds; its final body"},
    202: {"model": JobBody, "description": "accepted; poll the Location header (or follow its events)"},
    401: {"description": "missing or wrong API key", "content": PROBLEM},
    429: {
        "description": "the tenant's rate (`Retry-After`, `RateLimit`, `RateLimit-Policy`) or max_queued "
        "(`Retry-After`) is used up",
        "content": PROBLEM,
    },
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


PreferHeader = Annotated[
    str | None,
    Header(
        alias="Prefer",
        description="`wait=N` (RFC 7240): hold the answer up to N seconds (at most WAIT_MAX_S) until the job ends; "
        "then 200 with the final job body and `Preference-Applied: wait=N`, else 202 as without it",
        examples=["wait=30"],
    ),
]


def wait_preference(prefer: str | None, cap: float) -> int | None:
    """The ``wait`` preference of a ``Prefer`` header (RFC 7240 section 4.3), capped; None without one. A malformed
    preference is ignored, as the RFC asks of preferences a server does not understand."""
    if not prefer:
        return None
    for preference in prefer.split(","):
        token, _, value = preference.split(";", 1)[0].strip().partition("=")
        if token.strip().lower() == "wait":
            value = value.strip().strip('"')
            if value.isdigit():
                return int(min(int(value), cap))
    return None


class Submitter:
    """What a route needs to enqueue a job (made by the ``submitter`` dependency, so each route names it once)."""

    def __init__(
        self,
        request: Request,
        lifecycle: Lifecycle,
        store: ResultStore,
        settings: Settings,
        depth: QueueDepth,
        idempotency_key: str | None,
        prefer: str | None,
        caller: Caller,
    ) -> None:
        self.hub: EventHub = request.app.state.events
        self.meter: JobMeter = request.app.state.meter
        self.metrics: ApiMetrics = request.app.state.metrics
        self.quotas: Quotas = request.app.state.quotas
        self.caller = caller
        self.headers: dict[str, str] = {}  # the tenant's RateLimit headers, filled by the submission
        self.lifecycle, self.store, self.settings, self.depth = lifecycle, store, settings, depth
        self.idempotency_key = idempotency_key
        self.wait = wait_preference(prefer, settings.wait_max_s)
        self.request_id: str | None = request.scope.get("state", {}).get("request_id")
        self.traceparent = request.headers.get("traceparent") if tracing.active else None

    async def __call__(self, op: Operation, params: OperationParams, uploads: dict[str, bytes]) -> JSONResponse:
        with tracing.span("submit", parent=self.traceparent, kind="server", attributes={"operation": op.name}):
            return await self._submit(op, params, uploads)

    async def _enqueue(self, submit: Callable[..., Any], op: Operation, job_id: str) -> tuple[dict[str, Any], bool]:
        """``submit`` in the thread pool, the job remembered by the job metrics before it can end (its done
        event counts it) and forgotten again if it was not enqueued or is a replay."""
        self.meter.accepted(job_id, op.name, self.caller.tenant.name)
        try:
            with tracing.span("enqueue", kind="producer"):
                body, replayed = await run_in_threadpool(submit, job_id=job_id, traceparent=tracing.traceparent())
        except BaseException:
            self.meter.forget(job_id)
            raise
        if replayed:
            self.meter.forget(job_id)
        elif body.get("cached"):
            self.metrics.cache_hits.labels(op.name, self.caller.tenant.name).inc()
        return body, replayed

    async def _submit(self, op: Operation, params: OperationParams, uploads: dict[str, bytes]) -> JSONResponse:
        submit = partial(
            jobs.submit,
            self.lifecycle,
            self.store,
            self.settings,
            op,
            params,
            uploads=uploads,
            idem_key=self.idempotency_key,
            depth=self.depth,
            request_id=self.request_id,
            tenant=self.caller.tenant,
            owner=self.caller.owner,
            quotas=self.quotas,
            headers=self.headers,
        )
        job_id = jobs.new_job_id()
        if not self.wait or not await self.hub.ready():
            body, replayed = await self._enqueue(submit, op, job_id)
            return accepted(body, replayed, headers=self.headers)
        submit = partial(submit, exact_position=False)  # the answer shows the job's end, or a fresh look at it
        future = self.hub.expect(job_id)
        try:
            body, replayed = await self._enqueue(submit, op, job_id)
        except BaseException:
            self.hub.forget(job_id, future)
            raise
        if body["status"] in TERMINAL:  # answered from the result cache: nothing to wait for
            self.hub.forget(job_id, future)
            return accepted(body, replayed, waited=self.wait, headers=self.headers)
        if replayed:  # another job: wait for that one (it may have ended already)
            self.hub.forget(job_id, future)
            job_id = body["id"]
            future = self.hub.expect(job_id)
            record, position = await run_in_threadpool(jobs.fetch, self.lifecycle, job_id)
            if record.state.terminal:
                self.hub.forget(job_id, future)
                return accepted(record.body(position), replayed, waited=self.wait, headers=self.headers)
        final = await self.hub.wait(job_id, future, self.wait)
        if final is not None:
            return accepted(final, replayed, waited=self.wait, headers=self.headers)
        record, position = await run_in_threadpool(jobs.fetch, self.lifecycle, job_id)
        waited = self.wait if record.state.terminal else None
        return accepted(record.body(position), replayed, waited=waited, headers=self.headers)


async def submitter(
    request: Request,
    lifecycle: LifecycleDep,
    store: StoreDep,
    settings: SettingsDep,
    depth: DepthDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
    prefer: PreferHeader = None,
) -> Submitter:
    """The ``Submitter`` of a request (an ``async`` dependency: no thread hop to build it)."""
    return Submitter(request, lifecycle, store, settings, depth, idempotency_key, prefer, caller)


SubmitterDep = Annotated[Submitter, Depends(submitter)]


TERMINAL = ("succeeded", "failed", "canceled")


def accepted(
    body: dict[str, Any], replayed: bool, *, waited: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``202 Accepted`` with ``Location`` and the job body (``Idempotent-Replayed: true`` for a replay); ``200 OK``
    with ``Preference-Applied: wait=N`` when the answer waited for the job's end. ``headers``: more to send (the
    tenant's RateLimit headers)."""
    headers = {**(headers or {}), "Location": f"/jobs/{body['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    done = waited is not None and body["status"] in TERMINAL
    if done:
        headers["Preference-Applied"] = f"wait={waited}"
    return JSONResponse(body, status_code=200 if done else 202, headers=headers)


def _check_uploads(
    op: Operation, files: dict[str, UploadFile], settings: Settings, decoder: DecoderPool
) -> dict[str, bytes]:
    checked: dict[str, CheckedImage] = {}
    for upload in op.uploads:
        checked[upload.name] = read_image(files[upload.name], upload.name, settings, decoder)
        if upload.same_size_as is not None:
            check_same_size(checked[upload.name], checked[upload.same_size_as])
    return {name: image.data for name, image in checked.items()}


def _handler(op: Operation, settings: Settings) -> Callable[..., Any]:
    """The route function of ``op``; its signature (read by FastAPI) is built from the operation."""
    source = Query() if op.transport == "query" else Form()

    async def handler(
        params: OperationParams,
        unknown: list[ParamError],
        submit: Submitter,
        decoder: DecoderDep,
        **files: UploadFile,
    ) -> JSONResponse:
        if unknown:  # a misspelled parameter must not run the job with a default instead
            raise invalid_params(unknown)
        uploads = await run_in_threadpool(_check_uploads, op, files, settings, decoder) if op.uploads else {}
        return await submit(op, params, uploads)

    parameters = [
        Parameter("params", Parameter.KEYWORD_ONLY, annotation=Annotated[op.params.bounded(settings), source]),
        Parameter("unknown", Parameter.KEYWORD_ONLY, annotation=UnknownParameters),
        Parameter("submit", Parameter.KEYWORD_ONLY, annotation=SubmitterDep),
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
