"""The OpenAI Images API under /v1, driven by the real `openai` package (base_url=<service>/v1) against real
processes: a redis-server, the API, and one worker with the shipped MNIST checkpoints (they draw real digits) and
the tiny random-weight DeepFloyd IF pipelines (stage I 32x32, stage II 64x64)."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from app.routers.openai import SDEDIT_I_START, VARIATION_PROMPT
from models.flow.classifier import load_classifier
from tests.images import decode, noise
from tests.support import ROOT, Stack

KEY = "sdk-test-key"


@pytest.fixture(scope="module")
def service(redis_server, tiny_if, tmp_path_factory) -> Iterator[Stack]:
    # the shipped MNIST checkpoints (the settings' defaults), not the random tiny ones of `mnist_checkpoints`
    env = {**tiny_if, "API_KEY": KEY, "OPENAI_TIMEOUT_S": "120"}
    stack = Stack(redis_server.url, env, tmp_path_factory.mktemp("openai"))
    stack.client.headers["X-API-Key"] = KEY
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def client(service: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.client.base_url}/v1", api_key=KEY, max_retries=0, timeout=180)


def png(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json))))


def extra(item) -> dict:
    """The extension fields of one data item (the SDK keeps unknown fields)."""
    return item.model_extra or {}


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert {m.id for m in models.data} == {"deepfloyd-if", "mnist-flow"}
    assert all(m.object == "model" and m.owned_by for m in models.data)


def test_generate_deepfloyd_two_images_as_b64(client: openai.OpenAI, service: Stack) -> None:
    answer = client.images.generate(
        model="deepfloyd-if", prompt="a red ball", n=2, response_format="b64_json", extra_body={"seed": 5}
    )
    assert answer.created > 0 and len(answer.data) == 2
    first, second = (png(item) for item in answer.data)
    assert first.shape == second.shape == (32, 32, 3)  # the tiny stage I's size
    assert not np.array_equal(first, second)
    assert [extra(i)["seed"] for i in answer.data] == [5, 6]
    for item, image in zip(answer.data, (first, second), strict=True):
        job = service.job(extra(item)["job_id"])  # the same job as any other: same record, same files
        assert job["kind"] == "if_sample" and job["params"]["prompt"] == "a red ball"
        assert np.array_equal(decode(service.client.get(job["result_url"]).content), image)


def test_generate_deepfloyd_url_and_the_upscaled_size(client: openai.OpenAI, service: Stack) -> None:
    answer = client.images.generate(model="deepfloyd-if", prompt="a boat", size="64x64", extra_body={"seed": 1})
    (item,) = answer.data
    assert item.b64_json is None and item.url.startswith(f"{service.client.base_url}/jobs/")
    r = service.client.get(item.url, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert decode(r.content).shape == (64, 64, 3)  # stage II
    assert service.job(extra(item)["job_id"])["params"]["upscale"] is True


def test_generate_mnist_two_digits_as_b64_and_as_url(client: openai.OpenAI, service: Stack) -> None:
    answer = client.images.generate(model="mnist-flow", prompt="4", n=2, response_format="b64_json")
    assert [png(item).shape for item in answer.data] == [(28, 28), (28, 28)]
    answer = client.images.generate(model="mnist-flow", prompt="4", size="28x28", n=2, response_format="url")
    assert len(answer.data) == 2
    for item in answer.data:
        r = service.client.get(item.url)
        assert r.status_code == 200 and decode(r.content).shape == (28, 28)


def test_mnist_digits_are_of_the_requested_class(client: openai.OpenAI) -> None:
    """Our own classifier (models/checkpoints/mnist_classifier.safetensors) reads every digit as the one asked."""
    classifier = load_classifier(Path(ROOT) / "models" / "checkpoints" / "mnist_classifier.safetensors").eval()
    wanted, images = [], []
    for digit in (0, 3, 5, 7, 9):
        answer = client.images.generate(
            model="mnist-flow", prompt=str(digit), n=3, response_format="b64_json", extra_body={"seed": 100 + digit}
        )
        wanted += [digit] * len(answer.data)
        images += [png(item) for item in answer.data]
    x = torch.from_numpy(np.stack(images)).float().div(255).unsqueeze(1)  # (B, 1, 28, 28) in [0, 1]
    with torch.no_grad():
        predicted = classifier(x).argmax(1).tolist()
    assert predicted == wanted


def _rgba_mask(size: int) -> bytes:
    """OpenAI's convention: fully transparent = repaint (the left half), opaque = keep (the right half)."""
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[:, :, :3] = 90
    rgba[:, size // 2 :, 3] = 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_edit_with_an_rgba_mask_keeps_the_opaque_region(client: openai.OpenAI, service: Stack) -> None:
    image = noise(48, 48, seed=3)  # resized to the model size (32x32), as every upload
    answer = client.images.edit(
        image=("photo.png", image, "image/png"),
        mask=("mask.png", _rgba_mask(48), "image/png"),
        prompt="a cat",
        response_format="b64_json",
        extra_body={"seed": 2},
    )
    (item,) = answer.data
    out = png(item).astype(int)
    job = service.job(extra(item)["job_id"])
    assert job["kind"] == "if_inpaint"
    used = decode(service.client.get(job["results"]["input.png"]).content).astype(int)
    mask = decode(service.client.get(job["results"]["mask.png"]).content)  # as used: 255 = generated
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 0).all()  # transparent became ours: generate
    keep = mask == 0
    np.testing.assert_array_equal(out[keep], used[keep])  # the opaque region is the input, pixel for pixel
    assert np.abs(out[~keep] - used[~keep]).mean() > 10  # the transparent region is drawn anew


def test_edit_without_a_mask_is_sdedit(client: openai.OpenAI, service: Stack) -> None:
    answer = client.images.edit(image=("p.jpg", noise(40, 40, fmt="JPEG"), "image/jpeg"), prompt="a watercolor")
    job = service.job(extra(answer.data[0])["job_id"])
    assert job["kind"] == "if_sdedit" and job["status"] == "succeeded"
    assert job["params"]["i_start"] == SDEDIT_I_START and job["params"]["prompt"] == "a watercolor"


def test_create_variation(client: openai.OpenAI, service: Stack) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks the endpoint as retired at OpenAI
        answer = client.images.create_variation(
            image=("p.png", noise(32, 32, seed=9), "image/png"), n=2, response_format="b64_json"
        )
    assert [png(item).shape for item in answer.data] == [(32, 32, 3), (32, 32, 3)]
    job = service.job(extra(answer.data[0])["job_id"])
    assert job["kind"] == "if_sdedit"
    assert job["params"]["prompt"] == VARIATION_PROMPT and job["params"]["i_start"] == SDEDIT_I_START


def test_bad_requests_raise_the_sdks_errors(client: openai.OpenAI, service: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="mnist-flow", prompt="twelve")
    assert caught.value.status_code == 400 and caught.value.param == "prompt"
    assert "0 to 9" in caught.value.message and caught.value.code == "invalid-parameter"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="deepfloyd-if", prompt="a cat", n=0)
    assert caught.value.param == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="deepfloyd-if", prompt="a cat", size="1024x1024")
    assert caught.value.param == "size" and "32x32" in caught.value.message and "64x64" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # a truncated PNG: 422 elsewhere, 400 here
        client.images.edit(image=("a.png", noise(64, 64)[:300], "image/png"), prompt="x")
    assert caught.value.param == "image" and caught.value.code == "invalid-image"
    with pytest.raises(openai.APIStatusError) as caught:  # other statuses are the service's own
        client.images.edit(image=("a.png", b"not an image", "image/png"), prompt="x")
    assert caught.value.status_code == 415 and caught.value.param == "image"
    with pytest.raises(openai.BadRequestError) as caught:  # a mask without alpha marks nothing
        client.images.edit(
            image=("a.png", noise(16, 16), "image/png"), mask=("m.png", noise(16, 16), "image/png"), prompt="x"
        )
    assert caught.value.param == "mask" and "alpha" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.client.base_url}/v1", api_key="wrong", max_retries=0).models.list()
