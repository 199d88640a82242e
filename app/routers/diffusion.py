"""DeepFloyd IF operations: multipart/form-data in, a job out (same flow as /mnist/sample)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, UploadFile
from fastapi.responses import JSONResponse

from app import jobs
from app.deps import QueueDep, RedisDep, SettingsDep, require_api_key
from app.problems import invalid_param
from app.routers.common import MAX_SEED, SUBMIT_RESPONSES, accepted, pick_seed
from app.settings import Settings
from app.uploads import check_mask_matches, read_image

router = APIRouter(tags=["deepfloyd"], dependencies=[Depends(require_api_key)])

# Names of models.diffusion.views.VIEWS (kept here so the API need not import torch; a test
# checks that both lists agree).
VIEW_NAMES = ("flip_horizontal", "flip_vertical", "identity", "jigsaw", "negate", "rot180", "rot270", "rot90")
STRIDED_STEPS = 34  # timesteps 990, 960, ..., 0
NUM_TRAIN_TIMESTEPS = 1000

RESPONSES: dict[int | str, dict[str, Any]] = {
    **SUBMIT_RESPONSES,
    413: {"description": "an upload has too many bytes or pixels", "content": {"application/problem+json": {}}},
    415: {"description": "an upload is not PNG, JPEG or WebP", "content": {"application/problem+json": {}}},
}

Prompt = Annotated[str, Form(min_length=1, pattern=r"\S", description="text prompt (not blank)", examples=["an oil painting of a snowy mountain village"])]
Guidance = Annotated[float, Form(ge=0, description="classifier-free guidance scale", examples=[7.0])]
Seed = Annotated[int | None, Form(ge=0, le=MAX_SEED, description="same seed, same PNG", examples=[42])]
Upscale = Annotated[bool, Form(description="also upscale to 256x256 with stage II", examples=[False])]
IdemKey = Annotated[str | None, Header(alias="Idempotency-Key")]
ImageFile = Annotated[UploadFile, File(description="PNG, JPEG or WebP; center-cropped and resized to 64x64")]


def _check_common(settings: Settings, guidance: float, prompts: dict[str, str]) -> None:
    if guidance > settings.max_guidance:
        raise invalid_param("guidance", f"must be at most {settings.max_guidance}", location="body")
    for name, text in prompts.items():
        if len(text) > settings.max_prompt_chars:
            raise invalid_param(name, f"longer than {settings.max_prompt_chars} characters", location="body")
        if not text.strip():
            raise invalid_param(name, "must not be blank", location="body")


def _submit(redis, queue, settings, kind: str, request: dict[str, Any], idem: str | None,
            inputs: dict[str, bytes] | None = None) -> JSONResponse:
    if request.get("upscale"):
        jobs.ensure_servable(redis, queue, "if_upscale")
    params = request | {"seed": pick_seed(request.get("seed"))}
    job, replayed = jobs.submit(redis, queue, settings, kind, params, inputs=inputs, idem_key=idem, request=request)
    return accepted(job, replayed, redis, queue)


@router.post("/sample", status_code=202, summary="Text to image (stage I, optional stage II)", responses=RESPONSES)
async def if_sample(redis: RedisDep, queue: QueueDep, settings: SettingsDep, prompt: Prompt,
                    guidance: Guidance = 7.0, seed: Seed = None, upscale: Upscale = False,
                    idempotency_key: IdemKey = None) -> JSONResponse:
    _check_common(settings, guidance, {"prompt": prompt})
    request = {"prompt": prompt, "guidance": guidance, "seed": seed, "upscale": upscale}
    return _submit(redis, queue, settings, "if_sample", request, idempotency_key)


@router.post("/sdedit", status_code=202, summary="SDEdit image-to-image from noise level i_start", responses=RESPONSES)
async def if_sdedit(redis: RedisDep, queue: QueueDep, settings: SettingsDep, image: ImageFile,
                    prompt: Prompt = "a high quality photo",
                    i_start: Annotated[int, Form(ge=0, le=STRIDED_STEPS - 1, description="index into 990, 960, ..., 0: small = more noise, more change", examples=[10])] = 10,
                    guidance: Guidance = 7.0, seed: Seed = None, upscale: Upscale = False,
                    idempotency_key: IdemKey = None) -> JSONResponse:
    _check_common(settings, guidance, {"prompt": prompt})
    img = await read_image(image, "image", settings)
    request = {"prompt": prompt, "i_start": i_start, "guidance": guidance, "seed": seed, "upscale": upscale}
    return _submit(redis, queue, settings, "if_sdedit", request, idempotency_key, {"image": img.data})


@router.post("/inpaint", status_code=202, summary="Inpaint where the mask is white (RePaint-style)", responses=RESPONSES)
async def if_inpaint(redis: RedisDep, queue: QueueDep, settings: SettingsDep, image: ImageFile,
                     mask: Annotated[UploadFile, File(description="same size as the image; white (luminance >= 128, and alpha >= 128 if any) = generate, the rest is kept")],
                     prompt: Prompt = "a high quality photo", guidance: Guidance = 7.0, seed: Seed = None,
                     upscale: Upscale = False, idempotency_key: IdemKey = None) -> JSONResponse:
    _check_common(settings, guidance, {"prompt": prompt})
    img = await read_image(image, "image", settings)
    msk = await read_image(mask, "mask", settings)
    check_mask_matches(msk, img)
    request = {"prompt": prompt, "guidance": guidance, "seed": seed, "upscale": upscale}
    return _submit(redis, queue, settings, "if_inpaint", request, idempotency_key, {"image": img.data, "mask": msk.data})


@router.post("/anagram", status_code=202, summary="Visual anagram: one image, one prompt per view", responses=RESPONSES)
async def if_anagram(redis: RedisDep, queue: QueueDep, settings: SettingsDep,
                     prompts: Annotated[list[str], Form(min_length=2, description="two or more prompts (repeat the field)", examples=[["an oil painting of people around a campfire", "an oil painting of an old man"]])],
                     views: Annotated[list[str] | None, Form(description=f"one view per prompt (repeat the field); default identity + flip_vertical. One of: {', '.join(VIEW_NAMES)}", examples=[["identity", "flip_vertical"]])] = None,
                     guidance: Guidance = 7.0, seed: Seed = None, upscale: Upscale = False,
                     idempotency_key: IdemKey = None) -> JSONResponse:
    if len(prompts) < 2:
        raise invalid_param("prompts", "give two or more prompts (repeat the form field)", location="body")
    _check_common(settings, guidance, {f"prompts[{i}]": p for i, p in enumerate(prompts)})
    if views is None:
        if len(prompts) != 2:
            raise invalid_param("views", "required with more than two prompts (one view per prompt)", location="body")
        views = ["identity", "flip_vertical"]
    if len(views) != len(prompts):
        raise invalid_param("views", f"{len(views)} views for {len(prompts)} prompts; give one per prompt", location="body")
    for v in views:
        if v not in VIEW_NAMES:
            raise invalid_param("views", f"unknown view {v!r}; valid: {', '.join(VIEW_NAMES)}", location="body")
    request = {"prompts": prompts, "views": views, "guidance": guidance, "seed": seed, "upscale": upscale}
    return _submit(redis, queue, settings, "if_anagram", request, idempotency_key)


@router.post("/hybrid", status_code=202, summary="Hybrid image: prompt_low from afar, prompt_high up close", responses=RESPONSES)
async def if_hybrid(redis: RedisDep, queue: QueueDep, settings: SettingsDep,
                    prompt_low: Prompt, prompt_high: Prompt,
                    kernel_size: Annotated[int, Form(ge=1, le=63, description="odd Gaussian kernel size", examples=[33], json_schema_extra={"enum": list(range(1, 64, 2))})] = 33,
                    sigma: Annotated[float, Form(gt=0, le=20, description="Gaussian sigma", examples=[2.0])] = 2.0,
                    guidance: Guidance = 7.0, seed: Seed = None, upscale: Upscale = False,
                    idempotency_key: IdemKey = None) -> JSONResponse:
    _check_common(settings, guidance, {"prompt_low": prompt_low, "prompt_high": prompt_high})
    if kernel_size % 2 == 0:
        raise invalid_param("kernel_size", "must be odd", location="body")
    request = {"prompt_low": prompt_low, "prompt_high": prompt_high, "kernel_size": kernel_size, "sigma": sigma,
               "guidance": guidance, "seed": seed, "upscale": upscale}
    return _submit(redis, queue, settings, "if_hybrid", request, idempotency_key)


@router.post("/denoise", status_code=202, summary="Noise an image to t, then denoise it (blur, one step or iterative)",
             responses=RESPONSES)
async def if_denoise(redis: RedisDep, queue: QueueDep, settings: SettingsDep, image: ImageFile,
                     t: Annotated[int, Form(ge=0, le=NUM_TRAIN_TIMESTEPS - 1, description="forward-process timestep", examples=[500])] = 500,
                     method: Annotated[str, Form(pattern="^(blur|one_step|iterative)$", description="blur, one_step or iterative", examples=["one_step"])] = "one_step",
                     prompt: Prompt = "a high quality photo", guidance: Guidance = 7.0, seed: Seed = None,
                     idempotency_key: IdemKey = None) -> JSONResponse:
    _check_common(settings, guidance, {"prompt": prompt})
    img = await read_image(image, "image", settings)
    request = {"t": t, "method": method, "prompt": prompt, "guidance": guidance, "seed": seed}
    return _submit(redis, queue, settings, "if_denoise", request, idempotency_key, {"image": img.data})
