"""Continuous batching end to end: real Redis, worker processes that keep many jobs in flight (BATCHING=on,
the default), real uvicorn; results checked against the same requests computed alone in this process."""

from __future__ import annotations

import concurrent.futures as cf
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.settings import Settings
from models import imageio
from models.diffusion import load_stage1, ops
from models.diffusion.views import get_view
from models.flow.checkpoint import load_model
from models.flow.grid import make_grid
from models.flow.sampling import generate
from tests.images import gradient, half_mask
from tests.support import Stack, wait_until
from workers.registry import mnist_network

MAX_GREY, MAX_SHARE = 1, 0.01  # the promise for a request that shared its forwards (README, "Batching")


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(int)


def _close(png: bytes, expected: bytes) -> bool:
    a, b = _pixels(png), _pixels(expected)
    if a.shape != b.shape:
        return False
    diff = np.abs(a - b)
    return bool(diff.max() <= MAX_GREY and (diff > 0).mean() <= MAX_SHARE)


def _mnist_requests() -> list[dict]:
    samplers = ["euler", "heun", "midpoint"]
    return [
        {
            "digit": i % 10,
            "n": 1 + i % 3,
            "steps": 3 + i % 5,
            "sampler": samplers[i % 3],
            "guidance": 1.0 + i % 4,
            "seed": 100 + i,
        }
        | ({} if i % 7 else {"digit": None})
        for i in range(25)
    ]


def _mnist_expected(params: dict, ckpt: dict[str, str]) -> bytes:
    name = "MNIST_TIME_CHECKPOINT" if params["digit"] is None else "MNIST_CLASS_CHECKPOINT"
    model, _ = load_model(ckpt[name])
    net = mnist_network(model, Settings())  # what the worker serves (MNIST_PRECISION=auto)
    n = params["n"]
    images = generate(
        net,
        n=n,
        digits=None if params["digit"] is None else [params["digit"]] * n,
        steps=params["steps"],
        guidance=params["guidance"],
        method=params["sampler"],
        generator=torch.Generator().manual_seed(params["seed"]),
    )
    return imageio.png_bytes(make_grid(images, ncols=min(n, 10)))


def _if_requests() -> list[tuple[str, dict, dict]]:
    photo = {"image": ("p.png", gradient(40, 40), "image/png")}
    mask = {"mask": ("m.png", half_mask(40, 40), "image/png")}
    kinds = [
        ("/sample", {"prompt": "a red ball"}, {}),
        ("/sdedit", {"prompt": "a drawing", "i_start": "12"}, photo),
        ("/inpaint", {"prompt": "a balloon"}, photo | mask),
        ("/anagram", {"prompts": ["a fire", "a man"]}, {}),
        ("/hybrid", {"prompt_low": "a skull", "prompt_high": "waterfalls"}, {}),
        ("/denoise", {"t": "500", "method": "one_step"}, photo),
        ("/denoise", {"t": "690", "method": "iterative"}, photo),
        ("/sdedit", {"prompt": "a photo", "i_start": "25"}, photo),
    ]
    return [
        (path, data | {"seed": str(200 + i)}, files)
        for i, (path, data, files) in enumerate(kinds[i % len(kinds)] for i in range(25))
    ]


def _if_expected(path: str, data: dict, stage1) -> bytes:
    seed = torch.Generator().manual_seed(int(data["seed"]))
    image = ops.center_crop_resize(imageio.decode_image(gradient(40, 40)), stage1.image_size)
    if path == "/sample":
        out = ops.sample(stage1, data["prompt"], generator=seed)
    elif path == "/sdedit":
        out = ops.sdedit(stage1, image, data["prompt"], i_start=int(data["i_start"]), generator=seed)
    elif path == "/inpaint":
        mask = ops.center_crop_resize(imageio.decode_mask(half_mask(40, 40)), stage1.image_size, mode="nearest")
        out = ops.inpaint(stage1, image, (mask >= 0.5).float(), data["prompt"], generator=seed)
    elif path == "/anagram":
        views = [get_view("identity"), get_view("flip_vertical")]
        out = ops.anagram(stage1, data["prompts"], views, generator=seed)
    elif path == "/hybrid":
        out = ops.hybrid(stage1, data["prompt_low"], data["prompt_high"], generator=seed)
    else:
        out = ops.denoise(stage1, image, int(data["t"]), data["method"], generator=seed).denoised
    return imageio.png_bytes(out[0], value_range=(-1, 1))


@pytest.fixture(scope="module")
def batching_stack(redis_server, mnist_checkpoints, tiny_if, tmp_path_factory):
    stack = Stack(
        redis_server.url,
        {**mnist_checkpoints, **tiny_if, "MAX_INFLIGHT_JOBS": "16"},
        tmp_path_factory.mktemp("batching"),
    )
    stack.start_api()
    stack.start_worker()
    yield stack
    stack.stop()


def test_50_concurrent_mixed_jobs_all_succeed_with_correct_results(
    batching_stack: Stack, mnist_checkpoints, tiny_if_dirs: tuple[Path, Path]
) -> None:
    stack = batching_stack

    def submit_mnist(params: dict) -> dict:
        query = {k: v for k, v in params.items() if v is not None}
        return stack.client.post("/mnist/sample", params=query).json()

    def submit_if(request: tuple[str, dict, dict]) -> dict:
        path, data, files = request
        return stack.client.post(path, data=data, files=files or None).json()

    mnist, deepfloyd = _mnist_requests(), _if_requests()
    with cf.ThreadPoolExecutor(16) as pool:
        jobs = list(pool.map(submit_mnist, mnist)) + list(pool.map(submit_if, deepfloyd))
        bodies = list(pool.map(lambda job: stack.wait_terminal(job["id"], 240), jobs))
    failed = [(b["kind"], b["error_code"], b["error"]) for b in bodies if b["status"] != "succeeded"]
    assert not failed, (failed, stack.logs())
    stage1 = load_stage1(tiny_if_dirs[0], device="cpu")
    for body, params in zip(bodies[:25], mnist, strict=True):
        png = stack.client.get(body["result_url"]).content
        assert _close(png, _mnist_expected(params, mnist_checkpoints)), params
    for body, (path, data, _) in zip(bodies[25:], deepfloyd, strict=True):
        png = stack.client.get(body["results"]["result.png"]).content
        assert _close(png, _if_expected(path, data, stage1)), (path, data)
    # they ran together on one worker: at some moment several jobs were in flight at once
    edges = sorted([(b["started_at"], 1) for b in bodies] + [(b["finished_at"], -1) for b in bodies])
    in_flight = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert max(in_flight) >= 4, max(in_flight)


def test_cancel_in_the_middle_of_a_batch_leaves_the_others_alone(batching_stack: Stack, mnist_checkpoints) -> None:
    stack = batching_stack
    others = [{"digit": d, "n": 4, "steps": 60, "seed": 300 + d, "guidance": 3.0, "sampler": "euler"} for d in range(4)]
    jobs = [stack.client.post("/mnist/sample", params=p).json() for p in others]
    doomed = stack.client.post("/mnist/sample", params={"digit": 9, "n": 4, "steps": 400, "seed": 1}).json()
    wait_until(lambda: (stack.job(doomed["id"]).get("progress") or {}).get("step", 0) >= 2, 60, what="running")
    assert stack.client.post(f"/jobs/{doomed['id']}/cancel").status_code == 202
    body = stack.wait_terminal(doomed["id"], 30)
    assert body["status"] == "canceled" and body["progress"]["step"] < 400
    for job, params in zip(jobs, others, strict=True):
        done = stack.wait_terminal(job["id"], 120)
        assert done["status"] == "succeeded"
        assert _close(stack.client.get(done["result_url"]).content, _mnist_expected(params, mnist_checkpoints))


def test_kill_9_with_several_jobs_in_flight_retries_each_once(make_stack) -> None:
    stack = make_stack(MAX_INFLIGHT_JOBS="8")
    doomed = stack.start_worker()
    jobs = [
        stack.client.post("/mnist/sample", params={"digit": d, "n": 10, "steps": 300, "seed": d}).json()
        for d in range(4)
    ]
    for job in jobs:
        wait_until(
            lambda job=job: (stack.job(job["id"]).get("progress") or {}).get("step", 0) >= 1,
            60,
            what="every job to be in flight",
        )
    stack.kill_worker(doomed)
    stack.start_worker()
    for job in jobs:
        body = stack.wait_terminal(job["id"], 180)
        assert body["status"] == "succeeded", (body, stack.logs())
        assert body["attempts"] == 2
