"""The worker in-process (a burst work loop) against the test Redis: a job's run, its outcome in the record,
cancellation, failures with their codes, deadlines and the manifest, without HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
import torch
from PIL import Image
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from app import jobs as api_jobs
from core.lifecycle import Lifecycle
from core.operations import MNIST_DEFAULT_GUIDANCE, MNIST_DEFAULT_STEPS, OPERATIONS
from core.record import FIELDS, JobRecord, parse_time, record_key
from core.settings import Settings
from core.store import FolderStore, StoreUnavailable
from models import imageio
from models.flow.grid import make_grid
from models.flow.sampling import generate
from workers.context import WorkerEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _submit(lifecycle: Lifecycle, settings: Settings, **params: object) -> str:
    op = OPERATIONS["mnist_sample"]
    body, _ = api_jobs.submit(
        lifecycle, FolderStore(settings.results_dir), settings, op, op.params.bounded(settings)(**params)
    )
    return str(body["id"])


def _raw(lifecycle: Lifecycle, func: str, params: dict[str, object], *, timeout_s: int = 60, kind: str = "") -> str:
    """A job of any job function, enqueued as the API enqueues one."""
    job_id = uuid.uuid4().hex
    lifecycle.submit(
        job_id, kind=kind or func.rpartition(".")[2], func=func, params=params, retries=1, timeout_s=timeout_s
    )
    return job_id


def _record(lifecycle: Lifecycle, job_id: str) -> JobRecord:
    record = lifecycle.read(job_id)
    assert record is not None
    return record


def test_rq_uses_none_of_the_record_fields(lifecycle: Lifecycle) -> None:
    """The service's fields live in RQ's job hash: none of them may be a name RQ writes."""
    job = Job.create("os.getcwd", id=uuid.uuid4().hex, connection=lifecycle.redis)
    assert not set(FIELDS) & set(job.to_dict())


def test_a_job_writes_its_pngs_and_manifest(lifecycle: Lifecycle, settings: Settings, work: Callable[[], None]) -> None:
    job_id = _submit(lifecycle, settings, digit=4, n=3, steps=2, seed=11)
    work()
    record = _record(lifecycle, job_id)
    assert record.state.value == "succeeded" and record.main == "samples.png"
    assert record.files == ["samples.png", "manifest.json"]
    folder = settings.results_dir / job_id
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
    assert record.progress == {"step": 2, "total": 2}
    # one time format everywhere: the manifest's start is the job body's, ISO 8601
    body = record.body()
    assert manifest["started_at"] == body["started_at"] and body["started_at"].endswith("Z")
    assert parse_time(body["created_at"]) <= parse_time(body["started_at"]) <= parse_time(body["finished_at"])
    assert record.timings["queued_s"] >= 0 and record.timings["run_s"] > 0
    # RQ's own view agrees: finished, in its finished registry, not started
    queue = lifecycle.queue
    assert Job.fetch(job_id, connection=lifecycle.redis).get_status() == "finished"
    assert job_id in FinishedJobRegistry(queue=queue).get_job_ids()
    assert job_id not in StartedJobRegistry(queue=queue).get_job_ids(cleanup=False)
    assert 0 < lifecycle.redis.ttl(record_key(job_id)) <= settings.result_ttl_s


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
    lifecycle: Lifecycle,
    settings: Settings,
    env: WorkerEnv,
    request_params: dict[str, object],
    expected: dict[str, object],
    work: Callable[[], None],
) -> None:
    job_id = _submit(lifecycle, settings, n=3, seed=7, **request_params)
    work()
    folder = settings.results_dir / job_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {k: manifest["request"][k] for k in expected} == expected
    digit = request_params.get("digit")
    name = "mnist_time" if digit is None else "mnist_class"
    images = generate(
        env.registry.get(name),
        n=3,
        digits=None if digit is None else [digit] * 3,
        steps=expected["steps"],
        guidance=expected["guidance"],
        method=expected["sampler"],
        generator=torch.Generator().manual_seed(7),
    )
    assert (folder / "samples.png").read_bytes() == imageio.png_bytes(make_grid(images, ncols=3))
    assert _record(lifecycle, job_id).progress["total"] == expected["steps"]


def test_a_cancel_flag_stops_the_job_at_its_first_step(
    lifecycle: Lifecycle, settings: Settings, work: Callable[[], None]
) -> None:
    job_id = _submit(lifecycle, settings, digit=1, n=2, steps=50, seed=1)
    lifecycle.redis.hset(record_key(job_id), "cancel", "1")  # asked for between its claim and its start
    work()
    record = _record(lifecycle, job_id)
    assert record.state.value == "canceled" and record.files == [] and record.cancel
    assert record.progress is None  # stopped at its first step, before recording it
    assert not ((settings.results_dir / job_id) / "manifest.json").exists()
    assert Job.fetch(job_id, connection=lifecycle.redis).get_status() == "canceled"
    assert job_id in CanceledJobRegistry(queue=lifecycle.queue).get_job_ids(cleanup=False)


def test_a_job_canceled_while_queued_has_a_finish_time(lifecycle: Lifecycle, settings: Settings) -> None:
    job_id = _submit(lifecycle, settings, digit=1, seed=1)
    api_jobs.cancel(lifecycle, _record(lifecycle, job_id))
    body = _record(lifecycle, job_id).body()
    assert body["status"] == "canceled" and body["started_at"] is None and body["finished_at"] is not None
    assert lifecycle.redis.llen(lifecycle.queue.key) == 0  # out of the queue: no worker will take it
    assert Job.fetch(job_id, connection=lifecycle.redis).get_status() == "canceled"


def test_parameters_are_validated_again_by_the_job(
    lifecycle: Lifecycle, settings: Settings, work: Callable[[], None]
) -> None:
    job_id = _raw(lifecycle, OPERATIONS["mnist_sample"].job, {"n": 0, "seed": 1}, kind="mnist_sample")
    work()
    record = _record(lifecycle, job_id)
    assert record.state.value == "failed" and record.error_code == "invalid-request"
    assert record.error.startswith("invalid request: n: Input should be greater than or equal to 1")


@pytest.mark.parametrize(
    ("func", "code", "message"),
    [
        ("tests.fault_jobs.bug", "internal-error", "the job failed with an internal error"),
        ("tests.fault_jobs.out_of_memory", "out-of-memory", "out of memory while running out_of_memory"),
    ],
)
def test_an_error_inside_the_job_fails_it_once_with_a_code_and_no_server_detail(
    lifecycle: Lifecycle, settings: Settings, work: Callable[[], None], func: str, code: str, message: str
) -> None:
    job_id = _raw(lifecycle, func, {"seed": 1})
    work()
    record = _record(lifecycle, job_id)
    assert record.state.value == "failed" and record.error_code == code and record.error.startswith(message)
    assert "/" not in record.error and "Traceback" not in record.error  # no path, no traceback
    assert record.attempt == 1 and record.retries == 1  # not retried: it would fail the same way
    assert job_id in FailedJobRegistry(queue=lifecycle.queue).get_job_ids(cleanup=False)


def test_a_job_past_its_deadline_is_stopped_between_two_steps(
    lifecycle: Lifecycle, settings: Settings, work: Callable[[], None]
) -> None:
    job_id = _raw(lifecycle, "tests.fault_jobs.slow_steps", {"seed": 1}, timeout_s=1)
    t0 = time.monotonic()
    work()
    elapsed = time.monotonic() - t0
    record = _record(lifecycle, job_id)
    assert record.state.value == "failed" and record.error_code == "timeout"
    assert record.error == "the job ran past its time limit of 1 s"
    assert 1.0 <= elapsed < 3.0 and record.progress["step"] < 200


def test_results_that_cannot_be_stored_fail_the_job_after_a_bounded_retry(
    lifecycle: Lifecycle, settings: Settings, env: WorkerEnv, work: Callable[[], None], tmp_path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the results folder should be")
    env.files = FolderStore(blocker)  # every write fails: the store is unavailable
    env.store_errors = (StoreUnavailable,)
    env.settings = settings.model_copy(update={"store_write_timeout_s": 1.0})
    job_id = _submit(lifecycle, settings, digit=2, n=1, seed=1)
    t0 = time.monotonic()
    work()
    record = _record(lifecycle, job_id)
    assert record.state.value == "failed" and record.error_code == "store-unavailable"
    assert record.error == "the results could not be written to storage within 1 s; retry the job"
    assert 1.0 <= time.monotonic() - t0 < 5.0  # retried with backoff for the bounded time, then failed
