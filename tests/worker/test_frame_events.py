"""The job frame's events, previews and trajectories in-process (RQ burst mode), and the publish script's rules
(one terminal event, a status only when it changes, expiry with the results) against the test Redis."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job

from app import jobs as api_jobs
from core import events, storage
from core.operations import OPERATIONS, OperationParams
from core.protocol import JobCanceled, cancel_key
from core.settings import Settings
from workers.frame import JobFrame

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"preview_every": 3, "result_ttl_s": 3600}


def _stream(redis: Redis, job_id: str) -> list[events.Event]:
    return [events.parse_entry(job_id, i, f) for i, f in redis.xrange(events.stream_key(job_id))]


def test_a_job_with_previews_and_trajectory(queue: Queue, settings: Settings, work: Callable[[], None]) -> None:
    op = OPERATIONS["mnist_sample"]
    params = op.params.bounded(settings)(digit=7, n=3, steps=7, seed=4, previews=True, trajectory=True)
    job, _ = api_jobs.submit(queue.connection, queue, settings, op, params)
    work()
    stream = _stream(queue.connection, job.id)
    assert [e.event for e in stream[:2]] == ["status", "status"]
    assert [e.data for e in stream[:2]] == [{"status": "queued"}, {"status": "running", "attempt": 1}]
    previews = [e.data for e in stream if e.event == "preview"]
    assert [p["step"] for p in previews] == [3, 6, 7] and all(p["total"] == 7 for p in previews)
    assert [e.data["step"] for e in stream if e.event == "progress"][-1] == 7
    assert "done" not in {e.event for e in stream}  # the API publishes it, from RQ's stored status
    folder = storage.job_dir(settings.results_dir, job.id)
    for p in previews:
        with Image.open(folder / events.PREVIEWS / p["name"]) as png:
            assert png.size == (112, 112) and png.mode == "L"
    job.refresh()
    assert job.return_value()["files"] == ["samples.png", "trajectory.gif", "trajectory.png", "manifest.json"]
    with Image.open(folder / "trajectory.gif") as gif:
        assert gif.n_frames >= 3 and gif.size == (112, 112)  # (Pillow merges the held last frames)
    with Image.open(folder / "trajectory.png") as strip:
        assert strip.size == (3 * 112, 112)
    # the last preview is the first digit of the result, upscaled 4x with nearest neighbours
    with Image.open(folder / "samples.png") as grid, Image.open(folder / events.PREVIEWS / "0007.png") as last:
        first = grid.crop((0, 0, 28, 28))
        assert last.resize((28, 28), Image.Resampling.NEAREST).tobytes() == first.tobytes()
    assert queue.connection.ttl(events.stream_key(job.id)) > 3000


def _frame(queue: Queue, settings: Settings, **params: object) -> tuple[JobFrame[OperationParams], Job]:
    job = Job.create("tests.fault_jobs.bug", connection=queue.connection, id=uuid.uuid4().hex, meta={})
    job.save()
    frame = JobFrame(
        OperationParams, {"seed": 1, **params}, kind="if_sample", job=job, results_dir=settings.results_dir
    )
    return frame, job


def test_the_callback_runs_on_another_thread_and_raises_only_cancel(queue: Queue, settings: Settings) -> None:
    frame, job = _frame(queue, settings, previews=True, trajectory=True)
    image = torch.linspace(-1, 1, 8 * 8).reshape(1, 1, 8, 8).expand(1, 3, 8, 8)
    errors: list[BaseException] = []

    def driver() -> None:  # a batching driver thread stepping this job's sampler
        try:
            for step in range(1, 7):
                frame.progress(step, 6, image, image, stage="I")
            queue.connection.set(cancel_key(job.id), "1")
            frame.progress(7, 8, image, image, stage="I")
        except BaseException as exc:  # noqa: BLE001 - handed back to the job's thread below
            errors.append(exc)

    with frame:
        thread = threading.Thread(target=driver)
        thread.start()
        thread.join(10)
        assert len(errors) == 1 and isinstance(errors[0], JobCanceled)
        raise errors[0]  # as the driver hands a job's exception back to the job's own thread
    assert frame.result["status"] == "canceled"
    stream = _stream(queue.connection, job.id)
    names = [e.data["name"] for e in stream if e.event == "preview"]
    assert names == ["I-0003.png", "I-0006.png"]
    with Image.open(frame.folder / events.PREVIEWS / "I-0006.png") as png:
        assert png.size == (112, 112) and png.mode == "RGB"  # 8x8, upscaled 14x
        assert png.getpixel((0, 0)) == (0, 0, 0) and png.getpixel((111, 111)) == (255, 255, 255)  # [-1, 1] range


def test_a_broken_preview_never_fails_the_step(queue: Queue, settings: Settings) -> None:
    frame, _ = _frame(queue, settings, previews=True)
    with frame:
        frame.progress(3, 6, None, torch.zeros(1, 3, 8, 8))
        frame.progress(6, 6, None, "not a tensor")  # the estimate is unusable: logged, not raised
        frame.progress(6, 6, None, None)


def test_publish_rules(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    job_id = uuid.uuid4().hex
    publish = lambda event, data: events.publish(redis, job_id, event, data, ttl_s=100)  # noqa: E731
    first = publish("status", {"status": "queued"})
    assert first is not None and publish("status", {"status": "queued"}) is None  # a repeated status
    assert publish("status", {"status": "running", "attempt": 1}) is not None
    assert publish("status", {"status": "queued"}) is not None  # put back in the queue (a retry)
    assert publish("status", {"status": "running", "attempt": 2}) is not None
    assert publish("progress", {"step": 1, "total": 2}) is not None
    assert publish("done", {"status": "succeeded"}) is not None
    assert publish("done", {"status": "failed"}) is None  # one terminal event
    assert publish("progress", {"step": 2, "total": 2}) is None  # nothing after it
    stream = _stream(redis, job_id)
    assert [e.event for e in stream] == ["status", "status", "status", "status", "progress", "done"]
    assert 0 < redis.ttl(events.stream_key(job_id)) <= 100 and 0 < redis.ttl(events.state_key(job_id)) <= 100
    with pytest.raises(ValueError):
        publish("done", {"status": "running"})
    with pytest.raises(ValueError):
        publish("queue", {"position": 1})
    ids = [events.stream_id_order(e.id) for e in stream]
    assert ids == sorted(ids)


def test_the_stream_is_capped(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    job_id = uuid.uuid4().hex
    for step in range(300):
        events.publish(redis, job_id, "progress", {"step": step, "total": 300}, ttl_s=100, maxlen=50)
    assert redis.xlen(events.stream_key(job_id)) < 300  # approximately 50 (MAXLEN ~ trims whole nodes)
    assert _stream(redis, job_id)[-1].data["step"] == 299


def test_channel_messages_parse(redis_server) -> None:
    redis = Redis.from_url(redis_server.url)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.CHANNEL)
    job_id = uuid.uuid4().hex
    stream_id = events.publish(redis, job_id, "progress", {"step": 1, "total": 4, "stage": "I"}, ttl_s=100)
    events.notify_ended(redis, job_id)
    got = []
    for _ in range(50):
        message = pubsub.get_message(timeout=0.1)
        if message:
            got.append(events.parse_message(message["data"]))
        if len(got) == 2:
            break
    assert got[0] == events.Event(job_id, stream_id, "progress", {"step": 1, "total": 4, "stage": "I"})
    assert got[1] == events.Event(job_id, None, events.ENDED, {})
    assert events.parse_message(b"garbage") is None
    pubsub.close()


def test_preview_png_bytes_are_small(queue: Queue, settings: Settings) -> None:
    frame, _ = _frame(queue, settings, previews=True)
    with frame:
        frame.progress(3, 3, None, torch.rand(1, 3, 64, 64) * 2 - 1)
    png = (frame.folder / events.PREVIEWS / "0003.png").read_bytes()
    assert Image.open(io.BytesIO(png)).size == (64, 64) and len(png) < 20_000
