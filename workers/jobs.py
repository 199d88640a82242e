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
