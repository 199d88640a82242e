"""The worker in-process (RQ burst mode) against the test Redis: the job frame, cancellation, failures
and the manifest, without HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
import torch
from PIL import Image
from rq import Queue
from rq.job import Job

from app import jobs as api_jobs
from core import storage
from core.operations import MNIST_DEFAULT_GUIDANCE, MNIST_DEFAULT_STEPS, OPERATIONS
from core.protocol import cancel_key
from core.settings import Settings
from models import imageio
from models.flow.grid import make_grid
from models.flow.sampling import generate
from workers import registry as model_registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _submit(queue: Queue, settings: Settings, **params: object) -> Job:
    op = OPERATIONS["mnist_sample"]
    job, _ = api_jobs.submit(queue.connection, queue, settings, op, op.params.bounded(settings)(**params))
    return job


def test_a_job_writes_its_pngs_and_manifest(queue: Queue, settings: Settings, work: Callable[[], None]) -> None:
    job = _submit(queue, settings, digit=4, n=3, steps=2, seed=11)
    work()
    job.refresh()
    result = job.return_value()
    assert result["status"] == "succeeded" and result["main"] == "samples.png"
    assert result["files"] == ["samples.png", "manifest.json"]
    folder = storage.job_dir(settings.results_dir, job.id)
    manifest = json.loads((folder / "manifest.json").read_text())
    # the defaults the request left out are recorded as they were used
    assert manifest["request"] == {
        "seed": 11,
        "digit": 4,
        "n": 3,
        "steps": 2,
        "guidance": MNIST_DEFAULT_GUIDANCE,
        "sampler": "midpoint",
    }
    assert manifest["kind"] == "mnist_sample" and manifest["seed"] == 11 and manifest["attempt"] == 1
    assert manifest["model"]["name"] == "mnist_class" and manifest["timings"]["model_s"] > 0
    assert manifest["files"]["samples.png"]["shape"] == [1, 28, 84]
    with Image.open(folder / "samples.png") as png:
        assert png.size == (84, 28)
    assert job.meta["progress"] == {"step": 2, "total": 2}
    # the start time a client sees is recorded once per attempt and stays put
    body = api_jobs.view(job, queue.connection, queue)
    assert body.started_at is not None and body.started_at.isoformat() == job.meta["started_at"]
    assert body.finished_at is not None and body.finished_at >= body.started_at


@pytest.mark.parametrize(
    ("request_params", "expected"),
    [
        # no solver parameters: the new defaults, per model
        ({"digit": 5}, {"steps": MNIST_DEFAULT_STEPS["class"], "sampler": "midpoint", "guidance": 1.5}),
        ({}, {"steps": MNIST_DEFAULT_STEPS["time"], "sampler": "midpoint", "guidance": 1.5}),
        # strong guidance, or another solver, without steps: the steps that keep quality for it
        ({"digit": 5, "guidance": 5.0}, {"steps": 4, "sampler": "midpoint", "guidance": 5.0}),
        ({"digit": 5, "sampler": "euler"}, {"steps": 50, "sampler": "euler", "guidance": 1.5}),
        # a client that names them gets exactly those: the old default, and a mix
        (
            {"digit": 5, "steps": 50, "sampler": "euler", "guidance": 5.0},
            {"steps": 50, "sampler": "euler", "guidance": 5.0},
        ),
        ({"digit": 5, "steps": 4, "sampler": "heun"}, {"steps": 4, "sampler": "heun", "guidance": 1.5}),
    ],
)
def test_the_png_is_what_the_named_or_default_solver_draws(
    queue: Queue,
    settings: Settings,
    request_params: dict[str, object],
    expected: dict[str, object],
    work: Callable[[], None],
) -> None:
    job = _submit(queue, settings, n=3, seed=7, **request_params)
    work()
    job.refresh()
    folder = storage.job_dir(settings.results_dir, job.id)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {k: manifest["request"][k] for k in expected} == expected
    digit = request_params.get("digit")
    name = "mnist_time" if digit is None else "mnist_class"
    net = model_registry.get_registry().get(name)
    images = generate(
        net,
        n=3,
        digits=None if digit is None else [digit] * 3,
        steps=expected["steps"],
        guidance=expected["guidance"],
        method=expected["sampler"],
        generator=torch.Generator().manual_seed(7),
    )
    assert (folder / "samples.png").read_bytes() == imageio.png_bytes(make_grid(images, ncols=3))
    assert job.meta["progress"]["total"] == expected["steps"]


def test_a_cancel_flag_stops_the_job_at_its_first_step(
    queue: Queue, settings: Settings, work: Callable[[], None]
) -> None:
    job = _submit(queue, settings, digit=1, n=2, steps=50, seed=1)
    queue.connection.set(cancel_key(job.id), "1")  # as the API does for a running job
    work()
    job.refresh()
    assert job.return_value() == {"status": "canceled", "files": [], "main": None}
    assert api_jobs.state_of(job).value == "canceled"
    assert not (storage.job_dir(settings.results_dir, job.id) / "manifest.json").exists()


def test_a_job_canceled_while_queued_has_a_finish_time(queue: Queue, settings: Settings) -> None:
    job = _submit(queue, settings, digit=1, seed=1)
    api_jobs.cancel(queue.connection, job, settings)
    body = api_jobs.view(Job.fetch(job.id, connection=queue.connection), queue.connection, queue)
    assert body.status.value == "canceled" and body.started_at is None and body.finished_at is not None


def test_parameters_are_validated_again_by_the_job(queue: Queue, settings: Settings, work: Callable[[], None]) -> None:
    job = queue.enqueue_call(
        func=OPERATIONS["mnist_sample"].job,
        kwargs={"params": {"n": 0, "seed": 1}},
        job_id=uuid.uuid4().hex,
        meta={"kind": "mnist_sample"},
    )
    work()
    job.refresh()
    assert job.get_status() == "failed"
    assert job.meta["error"].startswith("invalid request: n: Input should be greater than or equal to 1")


def test_an_error_inside_the_frame_fails_the_job_once_with_its_message(
    queue: Queue, settings: Settings, work: Callable[[], None]
) -> None:
    job = queue.enqueue_call(
        func="tests.fault_jobs.bug", kwargs={"params": {"seed": 1}}, meta={"kind": "bug"}, job_id=uuid.uuid4().hex
    )
    work()
    job.refresh()
    assert job.get_status() == "failed" and job.meta["error"] == "RuntimeError: something broke"
    assert job.meta["attempts"] == 1 and job.retries_left == 0
