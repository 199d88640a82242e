"""The OpenAI Images API under ``/v1``: a thin adapter onto the service's own operations and jobs.

Each call is translated into the same typed parameter models (``core.operations``) and submitted with the same
``app.jobs.submit`` as the service's own routes (one path to the worker), then waits for its jobs' pushed ``done``
events (the event hub's ``expect`` / ``wait``, as ``Prefer: wait`` does), at most ``OPENAI_TIMEOUT_S``; past it
504 and the jobs still running are canceled. Batching, limits, back-pressure and cancel apply as to any job.

| OpenAI | here |
| --- | --- |
| ``GET /v1/models`` | ``deepfloyd-if``, ``mnist-flow`` |
| ``POST /v1/images/generations``, ``deepfloyd-if`` | ``if_sample`` (``POST /sample``); ``size`` is the stage-I size the live workers publish (64x64 for IF-I-XL), or the stage-II size (``upscale``; 256x256 for IF-II-L) |
| ``POST /v1/images/generations``, ``mnist-flow`` | ``mnist_sample``: ``prompt`` is the digit, "0" to "9"; ``size`` 28x28 |
| ``POST /v1/images/edits`` with ``mask`` | ``if_inpaint``: the mask's fully transparent pixels (OpenAI's convention) become our white (generate) |
| ``POST /v1/images/edits`` without ``mask`` | ``if_sdedit`` at ``i_start`` = ``SDEDIT_I_START`` (the default of ``POST /sdedit``) |
| ``POST /v1/images/variations`` | ``if_sdedit`` of the image with ``VARIATION_PROMPT`` at ``SDEDIT_I_START`` |

``n`` images are ``n`` jobs, seeds ``seed``, ``seed + 1``, ...: each item of ``data`` has its own job, seed and
download URL (the extra fields ``job_id`` and ``seed``), and the worker's batcher puts the jobs into shared
forwards, as it does for any concurrent requests. ``response_format``: ``url`` (default; ``/jobs/{id}/result`` on
this service, absolute from the request's base URL; it needs the API key like every job route) or ``b64_json``.
Errors are OpenAI's shape (``app.openai_errors``).
"""

import asyncio
import base64
import contextlib
import re
import time
from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from app import jobs
from app.deps import CallerDep, DecoderDep, DepthDep, LifecycleDep, SettingsDep, require_api_key
from app.events import EventHub
from app.imagecheck import DecoderPool, Refused
from app.jobs import QueueDepth
from app.metrics import JobMeter
from app.openai_errors import ErrorBody
from app.problems import Problem
from app.uploads import check_same_size, read_image
from core.lifecycle import Lifecycle
from core.operations import IF_UPSCALE, MAX_SEED, OPERATIONS, IfSdedit, OperationParams
from core.protocol import JobState
from core.settings import Settings
from core.store import ResultStore, StoreError, StoreNotFound

#: model id -> the operation its generations run
MODELS = {"deepfloyd-if": "if_sample", "mnist-flow": "mnist_sample"}
MODEL_CREATED = 1764547200  # 2025-12-01: the ``created`` of both models in /v1/models
OWNER = "diffusion-service"
MNIST_SIZE = "28x28"
#: The noise level of an edit without a mask and of a variation: ``POST /sdedit``'s default ``i_start`` (10 of the
#: 34 strided steps 990, 960, ..., 0: the image is noised to t = 690, so its layout and colours stay, its details
#: are drawn anew).
SDEDIT_I_START: int = IfSdedit.model_fields["i_start"].default
#: A variation has no prompt; the service's prompts are never blank, so it uses this neutral one (``POST /sdedit``'s
#: default prompt).
VARIATION_PROMPT: str = IfSdedit.model_fields["prompt"].default
_SIZE_RE = re.compile(r"^(\d{1,5})x(\d{1,5})$")

ResponseFormat = Literal["url", "b64_json"]
ModelName = Literal["deepfloyd-if", "mnist-flow"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ImageData(BaseModel):
    """One image: ``url`` or ``b64_json`` as asked, and (extensions) the job that made it and its seed."""

    model_config = ConfigDict(extra="allow")

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None
    job_id: str = Field(description="the job that made it (GET /jobs/{job_id})")
    seed: int = Field(description="the seed it was drawn with: the same request with it gives the same PNG")


class ImagesResponse(BaseModel):
    created: int = Field(description="unix time of the answer")
    data: list[ImageData]


class GenerationBase(BaseModel):
    """OpenAI's image generation request; fields it has that this service does not use are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(description="deepfloyd-if: the text; mnist-flow: the digit, 0 to 9", examples=["a red panda"])
    model: ModelName = Field("deepfloyd-if", description="deepfloyd-if or mnist-flow")
    size: str | None = Field(
        None,
        description="deepfloyd-if: the stage-I size (64x64 for IF-I-XL; omitted: that) or the stage-II size "
        "(256x256, upscaled); mnist-flow: 28x28. `auto` = omitted",
        examples=["64x64"],
    )
    response_format: ResponseFormat | None = Field(None, description="url (default) or b64_json")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="(extension) the seed of the first image; image i gets seed + i"
    )
    user: str | None = None


_ERROR = {"model": ErrorBody}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "a parameter or an upload is invalid (`param` names it)"},
    401: {**_ERROR, "description": "missing or wrong API key"},
    409: {**_ERROR, "description": "a job was canceled by another request"},
    413: {**_ERROR, "description": "an upload has too many bytes or pixels"},
    415: {**_ERROR, "description": "an upload is not PNG, JPEG or WebP"},
    500: {**_ERROR, "description": "a job failed inside the worker (`code` says how)"},
    503: {**_ERROR, "description": "the queue is full, or no live worker serves the model"},
    504: {**_ERROR, "description": "the jobs did not end within OPENAI_TIMEOUT_S (they are canceled)"},
}


def _bad(param: str, reason: str) -> Problem:
    return Problem(
        422, "invalid-parameter", f"{param}: {reason}", errors=[{"name": param, "in": "body", "reason": reason}]
    )


def _validated(op_name: str, settings: Settings, values: dict[str, Any], rename: dict[str, str]) -> OperationParams:
    """``values`` as the operation's parameter model (with the service's limits); a refusal names the OpenAI
    field (``rename``: our field -> theirs)."""
    try:
        return OPERATIONS[op_name].params.bounded(settings).model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "body"
        raise _bad(rename.get(field, field), str(first["msg"])) from None


def _seeds(seed: int | None, n: int) -> list[int]:
    base = jobs.pick_seed(seed)
    return [(base + i) % (MAX_SEED + 1) for i in range(n)]


def if_sizes(lifecycle: Lifecycle) -> tuple[int | None, int | None]:
    """(stage-I size, stage-II size or None) as a live worker that serves DeepFloyd publishes them (blocking)."""
    _, states, infos = jobs.operation_states(lifecycle)
    for info in infos.values():
        if "if_sample" in info.get("operations", []):
            models = info.get("models", {})
            stage1 = models.get("if_stage1", {}).get("image_size")
            stage2 = models.get("if_stage2", {}).get("image_size") if IF_UPSCALE in info.get("operations", []) else None
            if stage1:
                return int(stage1), int(stage2) if stage2 else None
    reason = states["if_sample"].reason or "no live worker serves it"
    raise Problem(503, "operation-unavailable", f"deepfloyd-if: its sizes are unknown ({reason})")


def if_upscale(lifecycle: Lifecycle, size: str | None) -> bool:
    """Whether ``size`` asks for the stage-II upscale (blocking: it reads what the workers publish)."""
    if size in (None, "", "auto"):
        return False
    match = _SIZE_RE.fullmatch(size)
    if match is None or match[1] != match[2]:
        raise _bad("size", f"{size!r} is not a square WIDTHxHEIGHT size (deepfloyd-if draws square images)")
    stage1, stage2 = if_sizes(lifecycle)
    if int(match[1]) not in (stage1, stage2):
        sizes = ", ".join(f"{s}x{s}" for s in (stage1, stage2) if s)
        raise _bad("size", f"{size!r} is not a size of deepfloyd-if here; one of {sizes}")
    return int(match[1]) == stage2 and stage2 != stage1


class Images:
    """What a call needs to run its jobs and answer (a dependency)."""

    def __init__(
        self, request: Request, lifecycle: LifecycleDep, settings: SettingsDep, depth: DepthDep, caller: CallerDep
    ) -> None:
        self.request = request
        self.caller = caller
        self.lifecycle: Lifecycle = lifecycle
        self.settings: Settings = settings
        self.depth: QueueDepth = depth
        self.hub: EventHub = request.app.state.events

    def store(self) -> ResultStore:
        """The app's result store (the results folder, or S3 with RESULTS_URL)."""
        store: ResultStore = self.request.app.state.store
        return store

    async def run(
        self, op_name: str, params: Sequence[OperationParams], uploads: dict[str, bytes], response_format: str | None
    ) -> JSONResponse:
        """Submit one job per item of ``params``, wait for them all, answer as OpenAI does."""
        op = OPERATIONS[op_name]
        if not await self.hub.ready():
            raise Problem(503, "queue-unavailable", "the job events (Redis) are unreachable; retry shortly")
        ids = [jobs.new_job_id() for _ in params]
        waits = {job_id: self.hub.expect(job_id) for job_id in ids}
        submitted: list[str] = []
        try:
            meter: JobMeter = self.request.app.state.meter
            for job_id, p in zip(ids, params, strict=True):
                meter.accepted(
                    job_id, op.name, self.caller.tenant.name
                )  # counted at its done, as the other doors' jobs
                try:
                    await run_in_threadpool(
                        partial(
                            jobs.submit,
                            self.lifecycle,
                            self.store(),
                            self.settings,
                            op,
                            p,
                            uploads=uploads,
                            depth=self.depth,
                            job_id=job_id,
                            request_id=self.request.scope.get("state", {}).get("request_id"),
                            tenant=self.caller.tenant,
                            owner=self.caller.owner,
                            quotas=self.request.app.state.quotas,
                            exact_position=False,
                        )
                    )
                except BaseException:
                    meter.forget(job_id)
                    raise
                submitted.append(job_id)
            finals = await self._wait(ids, waits)
        except BaseException:
            for job_id, future in waits.items():
                self.hub.forget(job_id, future)
            await self._cancel(submitted)
            raise
        data = [await self._item(body, response_format or "url") for body in finals]
        answer = ImagesResponse(created=int(time.time()), data=data)
        return JSONResponse(answer.model_dump(mode="json", exclude_none=True))

    async def _wait(self, ids: list[str], waits: dict[str, asyncio.Future[dict[str, Any]]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.openai_timeout_s
        finals = []
        for job_id in ids:
            body = await self.hub.wait(job_id, waits[job_id], max(0.0, deadline - loop.time()))
            if body is None:  # its end may have come while the subscription was down: look once
                record, position = await run_in_threadpool(
                    partial(jobs.fetch, self.lifecycle, job_id, owner=self.caller.owner)
                )
                if not record.state.terminal:
                    raise Problem(
                        504,
                        "timeout",
                        f"the jobs did not end within {self.settings.openai_timeout_s:g} s (OPENAI_TIMEOUT_S); "
                        "they were canceled",
                    )
                body = record.body(position)
            finals.append(body)
        return finals

    async def _cancel(self, ids: list[str]) -> None:
        for job_id in ids:
            with contextlib.suppress(Problem, OSError, RedisError):
                record, _ = await run_in_threadpool(jobs.fetch, self.lifecycle, job_id)
                if not record.state.terminal:
                    await run_in_threadpool(jobs.cancel, self.lifecycle, record)

    async def _item(self, body: dict[str, Any], response_format: str) -> ImageData:
        job_id = str(body["id"])
        status = body["status"]
        if status == JobState.canceled.value:
            raise Problem(409, "job-canceled", f"job {job_id} was canceled")
        if status != JobState.succeeded.value:
            code = str(body.get("error_code") or "internal-error")
            message = f"job {job_id} failed: {body.get('error') or code}"
            status_code = {"invalid-request": 422, "timeout": 504, "model-unavailable": 503, "store-unavailable": 503}
            raise Problem(status_code.get(code, 500), code, message)
        seed = int(body["params"]["seed"])
        if response_format == "url":
            return ImageData(
                url=f"{str(self.request.base_url).rstrip('/')}{body['result_url']}", job_id=job_id, seed=seed
            )
        data = await run_in_threadpool(self._main_png, job_id)
        return ImageData(b64_json=base64.b64encode(data).decode("ascii"), job_id=job_id, seed=seed)

    def _main_png(self, job_id: str) -> bytes:
        record = self.lifecycle.read(job_id)
        if record is None or not record.main:
            raise Problem(410, "job-expired", f"job {job_id} has expired")
        try:
            return self.store().get(record.files_of, record.main)  # a cached job: its source's object
        except StoreNotFound:
            raise Problem(410, "result-expired", f"the result of job {job_id} was deleted") from None
        except StoreError:
            raise Problem(503, "store-unavailable", "the result store is unreachable; retry shortly") from None


ImagesDep = Annotated[Images, Depends()]


def _edit_uploads(
    image: UploadFile, mask: UploadFile | None, settings: Settings, decoder: DecoderPool
) -> dict[str, bytes]:
    """The image (checked as any upload) and, with a mask, the mask in our convention (blocking)."""
    checked = read_image(image, "image", settings, decoder)
    if mask is None:
        return {"image": checked.data}
    raw = read_image(mask, "mask", settings, decoder)
    check_same_size(raw, checked)
    converted = decoder.alpha_mask(raw.data, settings.max_image_pixels)
    if isinstance(converted, Refused):
        reason = converted.reason
        raise Problem(
            converted.status,
            converted.slug,
            f"mask: {reason}",
            errors=[{"name": "mask", "in": "body", "reason": reason}],
        )
    return {"image": checked.data, "mask": converted}


def router(settings: Settings) -> APIRouter:
    """The /v1 routes, with the limits of ``settings`` (``n`` at most MAX_N)."""
    out = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)], responses=RESPONSES)
    n_field = Field(1, ge=1, le=settings.max_n, description="how many images (one job each), at most MAX_N")

    class ImageGeneration(GenerationBase):
        n: int | None = n_field

    NForm = Annotated[int, Form(ge=1, le=settings.max_n, description="how many images (one job each), at most MAX_N")]

    @out.get("/models", response_model=ModelList, summary="The models (OpenAI: models.list)")
    def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=MODEL_CREATED, owned_by=OWNER) for name in MODELS])

    @out.post(
        "/images/generations",
        response_model=ImagesResponse,
        summary="Generate images (OpenAI: images.generate)",
        description="deepfloyd-if: text to image (`POST /sample`); mnist-flow: the digit in `prompt`. Waits for "
        "the jobs (at most OPENAI_TIMEOUT_S).",
    )
    async def generations(body: ImageGeneration, images: ImagesDep) -> JSONResponse:
        seeds = _seeds(body.seed, body.n or 1)
        if body.model == "mnist-flow":
            digit = body.prompt.strip()
            if len(digit) != 1 or digit not in "0123456789":
                raise _bad("prompt", "mnist-flow draws one digit: the prompt is 0 to 9")
            if body.size not in (None, "", "auto", MNIST_SIZE):
                raise _bad("size", f"mnist-flow draws {MNIST_SIZE} digits")
            params = [_validated("mnist_sample", settings, {"digit": int(digit), "n": 1, "seed": s}, {}) for s in seeds]
            return await images.run("mnist_sample", params, {}, body.response_format)
        upscale = await run_in_threadpool(if_upscale, images.lifecycle, body.size)
        values = [{"prompt": body.prompt, "seed": s, "upscale": upscale} for s in seeds]
        params = [_validated("if_sample", settings, v, {"upscale": "size"}) for v in values]
        return await images.run("if_sample", params, {}, body.response_format)

    @out.post(
        "/images/edits",
        response_model=ImagesResponse,
        summary="Edit an image (OpenAI: images.edit)",
        description="With `mask`: inpainting (`POST /inpaint`), where the mask is fully transparent. Without: "
        f"SDEdit (`POST /sdedit`) at i_start={SDEDIT_I_START}. deepfloyd-if only.",
    )
    async def edits(
        images: ImagesDep,
        decoder: DecoderDep,
        image: Annotated[UploadFile, File(description="PNG, JPEG or WebP")],
        prompt: Annotated[str, Form(description="what the edited image shows")],
        mask: Annotated[
            UploadFile | None, File(description="PNG with alpha, the image's size: fully transparent = repaint")
        ] = None,
        model: Annotated[str | None, Form(description="deepfloyd-if")] = None,
        n: NForm = 1,
        size: Annotated[str | None, Form(description="as for generations")] = None,
        response_format: Annotated[ResponseFormat | None, Form()] = None,
        seed: Annotated[int | None, Form(ge=0, le=MAX_SEED, description="(extension) the first image's seed")] = None,
    ) -> JSONResponse:
        _deepfloyd_only(model)
        uploads = await run_in_threadpool(_edit_uploads, image, mask, settings, decoder)
        upscale = await run_in_threadpool(if_upscale, images.lifecycle, size)
        op = "if_inpaint" if mask is not None else "if_sdedit"
        base = {"prompt": prompt, "upscale": upscale} | ({} if mask is not None else {"i_start": SDEDIT_I_START})
        params = [_validated(op, settings, base | {"seed": s}, {"upscale": "size"}) for s in _seeds(seed, n)]
        return await images.run(op, params, uploads, response_format)

    @out.post(
        "/images/variations",
        response_model=ImagesResponse,
        summary="Variations of an image (OpenAI: images.create_variation)",
        description=f"SDEdit (`POST /sdedit`) at i_start={SDEDIT_I_START} with the neutral prompt "
        f"{VARIATION_PROMPT!r}. deepfloyd-if only.",
    )
    async def variations(
        images: ImagesDep,
        decoder: DecoderDep,
        image: Annotated[UploadFile, File(description="PNG, JPEG or WebP")],
        model: Annotated[str | None, Form(description="deepfloyd-if")] = None,
        n: NForm = 1,
        size: Annotated[str | None, Form(description="as for generations")] = None,
        response_format: Annotated[ResponseFormat | None, Form()] = None,
        seed: Annotated[int | None, Form(ge=0, le=MAX_SEED, description="(extension) the first image's seed")] = None,
    ) -> JSONResponse:
        _deepfloyd_only(model)
        uploads = await run_in_threadpool(_edit_uploads, image, None, settings, decoder)
        upscale = await run_in_threadpool(if_upscale, images.lifecycle, size)
        base = {"prompt": VARIATION_PROMPT, "i_start": SDEDIT_I_START, "upscale": upscale}
        params = [_validated("if_sdedit", settings, base | {"seed": s}, {"upscale": "size"}) for s in _seeds(seed, n)]
        return await images.run("if_sdedit", params, uploads, response_format)

    return out


def _deepfloyd_only(model: str | None) -> None:
    if model not in (None, "", "deepfloyd-if"):
        raise _bad("model", f"{model!r} cannot edit images here; use deepfloyd-if")
