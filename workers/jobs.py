"""Job functions, one per operation (``core.operations.OPERATIONS``), named by dotted name in the job record.

Each is thin and reads top to bottom: the job's validated parameters in (``workers.context.JobContext``); one
``models`` call with the resident model; PNGs written through the context, which adds the manifest.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.operations import IfAnagram, IfDenoise, IfHybrid, IfInpaint, IfParams, IfSample, IfSdedit, MnistSample
from core.protocol import JobError
from models import imageio
from models.diffusion import ops
from models.diffusion.engine import IFEngine
from models.diffusion.views import get_view
from models.flow.grid import make_grid
from models.flow.sampling import generate
from workers.context import JobContext, job_function

SIGNED = (-1.0, 1.0)  # DeepFloyd images are in [-1, 1]


@job_function(MnistSample)
def mnist_sample(job: JobContext[MnistSample]) -> None:
    """n digits (of class `digit`, or unguided) as one PNG grid, white on black, min(n, 10) columns."""
    p = job.params
    name = "mnist_time" if p.digit is None else "mnist_class"
    images = generate(
        job.model(name),
        n=p.n,
        digits=None if p.digit is None else [p.digit] * p.n,
        steps=p.solver_steps,
        guidance=p.guidance,
        method=p.sampler.value,
        generator=job.generator,
        callback=job.progress,
        runner=job.runner,
    )
    grid = make_grid(images, ncols=min(p.n, 10))
    job.save("samples.png", imageio.png_bytes(grid), main=True, shape=list(grid.shape))
    info = job.registry.models[name].info
    job.note(model={"name": name, "source": job.registry.source(name), "precision": info.get("precision")})


# ---- DeepFloyd IF -------------------------------------------------------------------------------------------


def _decode(job: JobContext[Any], name: str, decode: Any) -> torch.Tensor:
    """An upload decoded (the API checked it; a file that still fails is the request's fault, not a bug)."""
    try:
        return decode(job.input_bytes(name))  # type: ignore[no-any-return]
    except (OSError, ValueError) as exc:
        raise JobError("invalid-request", f"{name}: the upload could not be decoded as an image") from exc


def _input_image(job: JobContext[Any], engine: IFEngine) -> torch.Tensor:
    """The upload as the model uses it: center-cropped and resized to the model size, (1, 3, S, S)."""
    image = ops.center_crop_resize(_decode(job, "image", imageio.decode_image), engine.image_size)
    job.save("input.png", imageio.png_bytes(image[0], value_range=SIGNED))
    return image.to(engine.device)


def _stage1_result(job: JobContext[Any], image: torch.Tensor, prompt: str) -> None:
    """Write the stage-I result (``result.png``) and, with ``upscale``, the stage-II one as the main file."""
    params: IfParams = job.params
    job.save("result.png", imageio.png_bytes(image[0], value_range=SIGNED), main=True)
    models = {"stage1": job.registry.source("if_stage1")}
    if params.upscale:
        big = ops.upscale(
            job.model("if_stage2"),
            image,
            prompt,
            generator=job.generator,
            callback=job.stage_progress("II"),
            runner=job.runner,
        )
        job.save(f"result_{big.shape[-1]}.png", imageio.png_bytes(big[0], value_range=SIGNED), main=True)
        models["stage2"] = job.registry.source("if_stage2")
    job.note(models=models)


@job_function(IfSample)
def if_sample(job: JobContext[IfSample]) -> None:
    """Text to image."""
    p = job.params
    out = ops.sample(
        job.model("if_stage1"),
        p.prompt,
        guidance=p.guidance,
        generator=job.generator,
        callback=job.stage_progress("I"),
        runner=job.runner,
    )
    _stage1_result(job, out, p.prompt)


@job_function(IfSdedit)
def if_sdedit(job: JobContext[IfSdedit]) -> None:
    """SDEdit: the upload noised to ``i_start``, denoised with the prompt."""
    p = job.params
    engine = job.model("if_stage1")
    out = ops.sdedit(
        engine,
        _input_image(job, engine),
        p.prompt,
        i_start=p.i_start,
        guidance=p.guidance,
        generator=job.generator,
        callback=job.stage_progress("I"),
        runner=job.runner,
    )
    _stage1_result(job, out, p.prompt)


@job_function(IfInpaint)
def if_inpaint(job: JobContext[IfInpaint]) -> None:
    """Inpainting where the mask is white; ``mask.png`` is the mask as used (model size, binary)."""
    p = job.params
    engine = job.model("if_stage1")
    image = _input_image(job, engine)
    mask = ops.center_crop_resize(_decode(job, "mask", imageio.decode_mask), engine.image_size, mode="nearest")
    mask = (mask >= 0.5).float()
    job.save("mask.png", imageio.png_bytes(mask[0]))
    out = ops.inpaint(
        engine,
        image,
        mask.to(engine.device),
        p.prompt,
        guidance=p.guidance,
        generator=job.generator,
        callback=job.stage_progress("I"),
        runner=job.runner,
    )
    _stage1_result(job, out, p.prompt)


@job_function(IfAnagram)
def if_anagram(job: JobContext[IfAnagram]) -> None:
    """A visual anagram, and the result as seen in each view (``view_<i>_<name>.png``)."""
    p = job.params
    views = [get_view(v) for v in p.views or ()]
    out = ops.anagram(
        job.model("if_stage1"),
        p.prompts,
        views,
        guidance=p.guidance,
        generator=job.generator,
        callback=job.stage_progress("I"),
        runner=job.runner,
    )
    for i, (prompt, view) in enumerate(zip(p.prompts, views, strict=True)):
        job.save(
            f"view_{i}_{view.name}.png",
            imageio.png_bytes(view.view(out)[0], value_range=SIGNED),
            prompt=prompt,
            view=view.name,
        )
    _stage1_result(job, out, p.prompts[0])


@job_function(IfHybrid)
def if_hybrid(job: JobContext[IfHybrid]) -> None:
    """A hybrid image, and ``low_frequency.png``: the image seen from afar (a quarter of its size)."""
    p = job.params
    out = ops.hybrid(
        job.model("if_stage1"),
        p.prompt_low,
        p.prompt_high,
        kernel_size=p.kernel_size,
        sigma=p.sigma,
        guidance=p.guidance,
        generator=job.generator,
        callback=job.stage_progress("I"),
        runner=job.runner,
    )
    small = F.interpolate(out, size=max(out.shape[-1] // 4, 1), mode="area")
    job.save("low_frequency.png", imageio.png_bytes(small[0], value_range=SIGNED), reading=p.prompt_low)
    _stage1_result(job, out, p.prompt_high)


@job_function(IfDenoise)
def if_denoise(job: JobContext[IfDenoise]) -> None:
    """The upload noised to ``t`` (``noisy.png``) and denoised with ``method`` (``result.png``)."""
    p = job.params
    engine = job.model("if_stage1")
    res = ops.denoise(
        engine,
        _input_image(job, engine),
        p.t,
        p.method,
        prompt=p.prompt,
        guidance=p.guidance,
        generator=job.generator,
        callback=job.stage_progress("I"),
        runner=job.runner,
    )
    job.save("noisy.png", imageio.png_bytes(res.noisy[0], value_range=SIGNED))
    job.save("result.png", imageio.png_bytes(res.denoised[0], value_range=SIGNED), main=True)
    job.note(models={"stage1": job.registry.source("if_stage1")})
