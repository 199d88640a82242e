"""DeepFloyd endpoints end to end: real Redis, a real worker holding the tiny IF pipelines (loaded with
the same from_pretrained path as the real model), real uvicorn; everything through HTTP."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.images import decode, gradient, half_mask, noise, png_of
from tests.support import Stack


@pytest.fixture(scope="module")
def if_stack(redis_server, mnist_checkpoints, tiny_if, tmp_path_factory):
    stack = Stack(redis_server.url, {**mnist_checkpoints, **tiny_if}, tmp_path_factory.mktemp("if-stack"))
    stack.start_api()
    stack.start_worker()
    yield stack
    stack.stop()


def _run(stack: Stack, path: str, data: dict, files: dict | None = None) -> dict:
    r = stack.client.post(path, data=data, files=files)
    assert r.status_code == 202, r.text
    body = stack.wait_terminal(r.json()["id"], 120)
    assert body["status"] == "succeeded", (body, stack.logs())
    return body


def _get(stack: Stack, url: str) -> bytes:
    r = stack.client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    return r.content


def test_readyz_lists_if_operations(if_stack: Stack) -> None:
    ops = if_stack.client.get("/readyz").json()["operations"]
    assert {
        "if_sample",
        "if_sdedit",
        "if_inpaint",
        "if_anagram",
        "if_hybrid",
        "if_denoise",
        "if_upscale",
        "mnist_sample",
    } <= set(ops)


def test_sample_and_upscale(if_stack: Stack) -> None:
    body = _run(if_stack, "/sample", {"prompt": "a red ball", "seed": "3"})
    assert decode(_get(if_stack, body["result_url"])).shape == (32, 32, 3)
    assert body["progress"]["total"] == 34
    up = _run(if_stack, "/sample", {"prompt": "a red ball", "seed": "3", "upscale": "true"})
    assert set(up["results"]) >= {"result.png", "result_64.png"}
    assert decode(_get(if_stack, up["result_url"])).shape == (64, 64, 3)  # main = the upscaled one
    assert up["progress"]["stage"] == "II"
    # stage I of the upscaled job is the same image as without upscale
    assert _get(if_stack, up["results"]["result.png"]) == _get(if_stack, body["result_url"])


def test_sdedit_same_seed_same_bytes_and_input_as_used(if_stack: Stack) -> None:
    files = {"image": ("photo.jpg", gradient(60, 40, fmt="JPEG"), "image/jpeg")}
    a = _run(if_stack, "/sdedit", {"prompt": "a watercolor", "i_start": "20", "seed": "11"}, files)
    again = {"prompt": "a watercolor", "i_start": "20", "seed": "11", "cache": "false"}  # computed, not cached
    b = _run(if_stack, "/sdedit", again, files)
    c = _run(if_stack, "/sdedit", {"prompt": "a watercolor", "i_start": "20", "seed": "12"}, files)
    assert _get(if_stack, a["result_url"]) == _get(if_stack, b["result_url"])
    assert _get(if_stack, a["result_url"]) != _get(if_stack, c["result_url"])
    assert a["progress"]["total"] == 34 - 20
    used = decode(_get(if_stack, a["results"]["input.png"]))
    assert used.shape == (32, 32, 3)  # center-cropped square, resized to the model size


@pytest.mark.parametrize("mask_mode", ["L", "RGBA"])
def test_inpaint_keeps_the_known_pixels(if_stack: Stack, mask_mode: str) -> None:
    image = np.asarray(decode(noise(32, 32, seed=5)))
    files = {
        "image": ("i.png", png_of(image), "image/png"),
        "mask": ("m.png", half_mask(32, 32, mask_mode), "image/png"),
    }
    body = _run(if_stack, "/inpaint", {"prompt": "a cat", "seed": "1"}, files)
    out = decode(_get(if_stack, body["result_url"]))
    np.testing.assert_array_equal(out[:, 16:], image[:, 16:])  # mask 0 (black / transparent): kept exactly
    assert np.abs(out[:, :16].astype(int) - image[:, :16]).mean() > 10  # mask 1: generated anew
    mask = decode(_get(if_stack, body["results"]["mask.png"]))
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 0).all()


def test_anagram_writes_every_view(if_stack: Stack) -> None:
    data = {
        "prompts": ["a campfire", "an old man", "a dog"],
        "views": ["identity", "flip_vertical", "rot90"],
        "seed": "2",
    }
    body = _run(if_stack, "/anagram", data)
    main = decode(_get(if_stack, body["result_url"]))
    flipped = decode(_get(if_stack, body["results"]["view_1_flip_vertical.png"]))
    np.testing.assert_array_equal(flipped, main[::-1])
    rotated = decode(_get(if_stack, body["results"]["view_2_rot90.png"]))
    np.testing.assert_array_equal(rotated, np.rot90(main))
    np.testing.assert_array_equal(decode(_get(if_stack, body["results"]["view_0_identity.png"])), main)


def test_hybrid_has_low_frequency_rendering(if_stack: Stack) -> None:
    body = _run(
        if_stack,
        "/hybrid",
        {"prompt_low": "a skull", "prompt_high": "a waterfall", "kernel_size": "9", "sigma": "1.5", "seed": "4"},
    )
    assert decode(_get(if_stack, body["result_url"])).shape == (32, 32, 3)
    assert decode(_get(if_stack, body["results"]["low_frequency.png"])).shape == (8, 8, 3)


@pytest.mark.parametrize("method", ["blur", "one_step", "iterative"])
def test_denoise_methods(if_stack: Stack, method: str) -> None:
    files = {"image": ("i.webp", gradient(32, 32, fmt="WEBP"), "image/webp")}
    body = _run(if_stack, "/denoise", {"t": "500", "method": method, "seed": "8"}, files)
    assert {"result.png", "noisy.png", "input.png", "manifest.json"} <= set(body["results"])
    noisy = decode(_get(if_stack, body["results"]["noisy.png"])).astype(int)
    used = decode(_get(if_stack, body["results"]["input.png"])).astype(int)
    assert np.abs(noisy - used).mean() > 20  # t=500 is visibly noisy
    if method == "iterative":
        assert body["progress"]["total"] == 1 + len([t for t in range(990, -1, -30) if t < 500])


def test_if_endpoints_answer_503_without_deepfloyd(make_stack) -> None:
    stack = make_stack()  # MNIST only
    stack.start_worker()
    r = stack.client.post("/sample", data={"prompt": "a cat"})
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    assert "IF_ENABLED" in r.json()["detail"] and "TINY_IF=1" in r.json()["detail"]
    assert "retry-after" not in r.headers  # a configuration problem: waiting will not fix it
    assert stack.client.post("/mnist/sample", params={"digit": 1, "steps": 2}).status_code == 202


def test_if_weights_missing_503_says_how_to_fix(make_stack, tmp_path) -> None:
    stack = make_stack(IF_ENABLED="true", IF_STAGE1_MODEL=str(tmp_path / "no-such-model"), IF_STAGE2_MODEL="")
    stack.start_worker()
    r = stack.client.post("/sample", data={"prompt": "a cat"})
    assert r.status_code == 503
    assert "if_stage1" in r.json()["detail"] and "IF_STAGE1_MODEL" in r.json()["detail"]
    job = stack.client.post("/mnist/sample", params={"digit": 1, "steps": 2}).json()
    assert stack.wait_terminal(job["id"])["status"] == "succeeded"


def test_hub_unreachable_fails_fast_and_readyz_says_why(make_stack, tmp_path) -> None:
    from tests.support import free_port

    stack = make_stack(
        IF_ENABLED="true",
        IF_STAGE1_MODEL="DeepFloyd/IF-I-XL-v1.0",
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HOME=str(tmp_path / "hf"),
    )
    started = time.monotonic()
    stack.start_worker()
    assert time.monotonic() - started < 20  # the hub client alone retries for ~30 s per file
    ready = stack.client.get("/readyz").json()
    assert ready["ready"] and ready["operations"] == ["mnist_sample"]
    states = ready["operation_states"]
    assert states["mnist_sample"] == {"available": True, "workers": 1, "reason": None}
    for op in ("if_sample", "if_sdedit", "if_upscale"):
        assert not states[op]["available"] and "unreachable" in states[op]["reason"], states[op]
    r = stack.client.post("/sample", data={"prompt": "a cat"})
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]
    job = stack.client.post("/mnist/sample", params={"digit": 1, "steps": 2}).json()
    assert stack.wait_terminal(job["id"])["status"] == "succeeded"


def test_if_enabled_auto_is_off_without_cuda_and_readyz_says_so(make_stack) -> None:
    stack = make_stack(IF_ENABLED="auto")
    stack.start_worker()
    states = stack.client.get("/readyz").json()["operation_states"]
    assert not states["if_hybrid"]["available"] and "IF_ENABLED=auto" in states["if_hybrid"]["reason"]
