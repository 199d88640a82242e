"""Job functions, enqueued by dotted name (see `workers.protocol.JOB_FUNCTIONS`).

Each is thin: JSON-able arguments and input file names in, one `models` call with the resident
model, PNGs + manifest out (through `runtime.run_job`), a small dict returned.
"""

from __future__ import annotations

from typing import Any

import torch

from models.flow.grid import make_grid
from models.flow.sampling import generate
from workers import imageio
from workers.registry import get_registry, get_results_dir
from workers.runtime import JobContext, run_job


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def mnist_sample(*, digit: int | None, n: int, steps: int, guidance: float, sampler: str, seed: int) -> dict[str, Any]:
    """n digits (of class `digit`, or unguided) as one PNG grid, white on black, min(n, 10) columns."""
    params = {"digit": digit, "n": n, "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed}

    def body(ctx: JobContext) -> dict[str, Any]:
        registry = get_registry()
        name = "mnist_time" if digit is None else "mnist_class"
        model = registry.get(name)
        images = generate(
            model,
            n=n,
            digits=None if digit is None else [digit] * n,
            steps=steps,
            guidance=guidance,
            method=sampler,
            generator=_generator(registry.device, seed),
            callback=ctx.progress,
        )
        grid = make_grid(images, ncols=min(n, 10))
        ctx.save("samples.png", imageio.png_bytes(grid), main=True, shape=list(grid.shape))
        return {"seed": seed, "model": {"name": name, "source": registry.models[name].source},
                "device": str(registry.device)}

    return run_job("mnist_sample", params, body, results_dir=get_results_dir())


# ---- DeepFloyd IF -------------------------------------------------------------------------------

def _if_run(kind: str, params: dict[str, Any], produce) -> dict[str, Any]:
    """Shared frame of the IF jobs: resident engines, the seeded generator, optional stage II.

    `produce(ctx, engine, generator, progress) -> (result (1, 3, S, S) in [-1, 1], prompt for stage II)`
    writes its own extra files; this writes `result.png` (or `result_256.png` as the main file when
    upscaled) and the manifest fields.
    """
    from models.diffusion.ops import upscale

    def body(ctx: JobContext) -> dict[str, Any]:
        registry = get_registry()
        engine = registry.get("if_stage1")
        generator = _generator(registry.device, params["seed"])
        result, prompt = produce(ctx, engine, generator, ctx.stage_progress("I"))
        ctx.save("result.png", imageio.png_bytes(result[0], value_range=(-1, 1)), main=True)
        models = {"stage1": registry.models["if_stage1"].source}
        if params.get("upscale"):
            stage2 = registry.get("if_stage2")
            big = upscale(stage2, result, prompt, generator=generator, callback=ctx.stage_progress("II"))
            ctx.save(f"result_{big.shape[-1]}.png", imageio.png_bytes(big[0], value_range=(-1, 1)), main=True)
            models["stage2"] = registry.models["if_stage2"].source
        return {"seed": params["seed"], "models": models, "device": str(registry.device)}

    return run_job(kind, params, body, results_dir=get_results_dir())


def _input_image(ctx: JobContext, engine, name: str = "image") -> torch.Tensor:
    """The upload as the model uses it: center-cropped and resized to the model size, (1, 3, S, S)."""
    from models.diffusion.ops import center_crop_resize

    image = center_crop_resize(imageio.decode_image(ctx.input_bytes(name)), engine.image_size)
    ctx.save("input.png", imageio.png_bytes(image[0], value_range=(-1, 1)))
    return image.to(engine.device)


def if_sample(*, prompt: str, guidance: float, seed: int, upscale: bool = False) -> dict[str, Any]:
    from models.diffusion import ops

    params = {"prompt": prompt, "guidance": guidance, "seed": seed, "upscale": upscale}

    def produce(ctx, engine, generator, progress):
        return ops.sample(engine, prompt, guidance=guidance, generator=generator, callback=progress), prompt

    return _if_run("if_sample", params, produce)


def if_sdedit(*, prompt: str, i_start: int, guidance: float, seed: int, upscale: bool = False,
              inputs: list[str]) -> dict[str, Any]:
    from models.diffusion import ops

    params = {"prompt": prompt, "i_start": i_start, "guidance": guidance, "seed": seed, "upscale": upscale}

    def produce(ctx, engine, generator, progress):
        image = _input_image(ctx, engine)
        out = ops.sdedit(engine, image, prompt, i_start=i_start, guidance=guidance, generator=generator,
                         callback=progress)
        return out, prompt

    return _if_run("if_sdedit", params, produce)


def if_inpaint(*, prompt: str, guidance: float, seed: int, upscale: bool = False, inputs: list[str]) -> dict[str, Any]:
    from models.diffusion import ops

    params = {"prompt": prompt, "guidance": guidance, "seed": seed, "upscale": upscale}

    def produce(ctx, engine, generator, progress):
        image = _input_image(ctx, engine)
        mask = ops.center_crop_resize(imageio.decode_mask(ctx.input_bytes("mask")), engine.image_size, mode="nearest")
        mask = (mask >= 0.5).float()
        ctx.save("mask.png", imageio.png_bytes(mask[0]))
        out = ops.inpaint(engine, image, mask.to(engine.device), prompt, guidance=guidance, generator=generator,
                          callback=progress)
        return out, prompt

    return _if_run("if_inpaint", params, produce)


def if_anagram(*, prompts: list[str], views: list[str], guidance: float, seed: int,
               upscale: bool = False) -> dict[str, Any]:
    from models.diffusion import ops
    from models.diffusion.views import get_view

    params = {"prompts": prompts, "views": views, "guidance": guidance, "seed": seed, "upscale": upscale}

    def produce(ctx, engine, generator, progress):
        view_objs = [get_view(v) for v in views]
        out = ops.anagram(engine, prompts, view_objs, guidance=guidance, generator=generator, callback=progress)
        for i, (name, view) in enumerate(zip(views, view_objs)):
            ctx.save(f"view_{i}_{name}.png", imageio.png_bytes(view.view(out)[0], value_range=(-1, 1)),
                     prompt=prompts[i], view=name)
        return out, prompts[0]

    return _if_run("if_anagram", params, produce)


def if_hybrid(*, prompt_low: str, prompt_high: str, kernel_size: int, sigma: float, guidance: float, seed: int,
              upscale: bool = False) -> dict[str, Any]:
    import torch.nn.functional as F

    from models.diffusion import ops

    params = {"prompt_low": prompt_low, "prompt_high": prompt_high, "kernel_size": kernel_size, "sigma": sigma,
              "guidance": guidance, "seed": seed, "upscale": upscale}

    def produce(ctx, engine, generator, progress):
        out = ops.hybrid(engine, prompt_low, prompt_high, kernel_size=kernel_size, sigma=sigma, guidance=guidance,
                         generator=generator, callback=progress)
        small = F.interpolate(out, size=max(out.shape[-1] // 4, 1), mode="area")  # the image seen from afar
        ctx.save("low_frequency.png", imageio.png_bytes(small[0], value_range=(-1, 1)), reading=prompt_low)
        return out, prompt_high

    return _if_run("if_hybrid", params, produce)


def if_denoise(*, t: int, method: str, prompt: str, guidance: float, seed: int, inputs: list[str]) -> dict[str, Any]:
    from models.diffusion import ops

    params = {"t": t, "method": method, "prompt": prompt, "guidance": guidance, "seed": seed}

    def produce(ctx, engine, generator, progress):
        image = _input_image(ctx, engine)
        res = ops.denoise(engine, image, t, method, prompt=prompt, guidance=guidance, generator=generator,
                          callback=progress)
        ctx.save("noisy.png", imageio.png_bytes(res.noisy[0], value_range=(-1, 1)))
        return res.denoised, prompt

    return _if_run("if_denoise", params, produce)
