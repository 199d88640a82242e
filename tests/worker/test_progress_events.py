"""A job's events, previews and trajectory in-process (a burst work loop), and the record scripts' rules (the
state and the event log move together, one terminal event, nothing after it, expiry with the results)."""

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

from app import jobs as api_jobs
from core import events
from core.lifecycle import Lifecycle
from core.operations import OPERATIONS, OperationParams
from core.protocol import JobCanceled, held_key
from core.record import JobRecord, record_key
from core.settings import Settings
from core.store import FolderStore
from tests.support import wait_until
from workers.cancellation import CancelWatch
from workers.context import JobContext, WorkerEnv
from workers.progress import ProgressSink
from workers.results import ResultWriter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"preview_every": 3, "result_ttl_s": 3600}


def _stream(redis: Redis, job_id: str) -> list[events.Event]:
    return [events.parse_entry(job_id, i, f) for i, f in redis.xrange(events.stream_key(job_id))]


def test_a_job_with_previews_and_trajectory(lifecycle: Lifecycle, settings: Settings, work: Callable[[], None]) -> None:
    op = OPERATIONS["mnist_sample"]
    params = op.params.bounded(settings)(digit=7, n=3, steps=7, seed=4, previews=True, trajectory=True)
    body, _ = api_jobs.submit(lifecycle, FolderStore(settings.results_dir), settings, op, params)
    job_id = body["id"]
    work()
    stream = _stream(lifecycle.redis, job_id)
    assert [e.event for e in stream[:2]] == ["status", "status"]
    assert [e.data for e in stream[:2]] == [{"status": "queued"}, {"status": "running", "attempt": 1}]
    previews = [e.data for e in stream if e.event == "preview"]
    assert [p["step"] for p in previews] == [3, 6, 7] and all(p["total"] == 7 for p in previews)
    assert [e.data["step"] for e in stream if e.event == "progress"][-1] == 7
    # the worker pushes the one terminal event, last, with the body a poll shows
    assert [e.event for e in stream].count("done") == 1 and stream[-1].event == "done"
    record = lifecycle.read(job_id)
    assert record is not None and stream[-1].data == record.body()
    folder = settings.results_dir / job_id
    for p in previews:
        with Image.open(folder / events.PREVIEWS / p["name"]) as png:
            assert png.size == (112, 112) and png.mode == "L"
    assert record.files == ["samples.png", "trajectory.gif", "trajectory.png", "manifest.json"]
    with Image.open(folder / "trajectory.gif") as gif:
        assert gif.n_frames >= 3 and gif.size == (112, 112)  # (Pillow merges the held last frames)
    with Image.open(folder / "trajectory.png") as strip:
        assert strip.size == (3 * 112, 112)
    # the last preview is the first digit of the result, upscaled 4x with nearest neighbours
    with Image.open(folder / "samples.png") as grid, Image.open(folder / events.PREVIEWS / "0007.png") as last:
        first = grid.crop((0, 0, 28, 28))
        assert last.resize((28, 28), Image.Resampling.NEAREST).tobytes() == first.tobytes()
    assert 3000 < lifecycle.redis.ttl(events.stream_key(job_id)) <= 3600


def _started(lifecycle: Lifecycle, env: WorkerEnv, **params: object) -> JobRecord:
    job_id = uuid.uuid4().hex
    lifecycle.submit(
        job_id, kind="if_sample", func="tests.fault_jobs.bug", params={"seed": 1, **params}, retries=1, timeout_s=60
    )
    started, _ = lifecycle.start(env.name, None, 1)
    assert [s.id for s in started] == [job_id]
    return started[0].record


def _context(lifecycle: Lifecycle, env: WorkerEnv, settings: Settings, **params: object) -> JobContext[Any]:
    record = _started(lifecycle, env, **params)
    writer = ResultWriter(record.id, env.files)
    sink = ProgressSink(
        record.id,
        record.attempt,
        lifecycle,
        writer.put_preview,
        value_range=(-1.0, 1.0),
        preview_every=settings.preview_every,
        previews=bool(params.get("previews")),
        trajectory=bool(params.get("trajectory")),
    )
    parsed = OperationParams.model_validate(record.params)
    return JobContext(env, record, parsed, sink, writer, deadline=float("inf"))


def test_the_callback_runs_on_another_thread_and_raises_only_cancel(
    lifecycle: Lifecycle, env: WorkerEnv, settings: Settings
) -> None:
    env.cancels = CancelWatch(lifecycle.redis).start()
    job = _context(lifecycle, env, settings, previews=True, trajectory=True)
    env.cancels.watch(job.id)
    image = torch.linspace(-1, 1, 8 * 8).reshape(1, 1, 8, 8).expand(1, 3, 8, 8)
    errors: list[BaseException] = []

    def driver() -> None:  # a batching driver thread stepping this job's sampler
        try:
            for step in range(1, 7):
                job.progress(step, 6, image, image, stage="I")
            api_jobs.cancel(lifecycle, job.record)  # as the API does for a running job
            for step in range(7, 100):
                job.progress(step, 100, image, image, stage="I")
                threading.Event().wait(0.01)
        except BaseException as exc:  # noqa: BLE001 - handed back to the job's thread below
            errors.append(exc)

    thread = threading.Thread(target=driver)
    thread.start()
    thread.join(10)
    env.cancels.stop()
    assert len(errors) == 1 and isinstance(errors[0], JobCanceled)
    job.sink.flush()
    stream = _stream(lifecycle.redis, job.id)
    names = [e.data["name"] for e in stream if e.event == "preview"]
    assert names[:2] == ["I-0003.png", "I-0006.png"]
    assert lifecycle.redis.hget(record_key(job.id), "cancel") == b"1"
    folder = settings.results_dir / job.id
    with Image.open(folder / events.PREVIEWS / "I-0006.png") as png:
        assert png.size == (112, 112) and png.mode == "RGB"  # 8x8, upscaled 14x
        assert png.getpixel((0, 0)) == (0, 0, 0) and png.getpixel((111, 111)) == (255, 255, 255)  # [-1, 1] range


def test_a_broken_preview_never_fails_the_step(lifecycle: Lifecycle, env: WorkerEnv, settings: Settings) -> None:
    job = _context(lifecycle, env, settings, previews=True)
    job.progress(3, 6, None, torch.zeros(1, 3, 8, 8))
    job.progress(6, 6, None, "not a tensor")  # the estimate is unusable: logged, not raised
    job.progress(6, 6, None, None)


def test_the_last_step_progress_rides_with_the_next_event(
    lifecycle: Lifecycle, env: WorkerEnv, settings: Settings
) -> None:
    """A last step's progress is held back and sent just before what follows it (stage II, or done)."""
    job = _context(lifecycle, env, settings)
    job.progress(1, 1, stage="I")  # stage I's only step: held
    job.sink.flush()
    assert [e.event for e in _stream(lifecycle.redis, job.id)] == ["status", "status"]
    job.progress(1, 2, stage="II")  # stage II's first step: stage I's last goes first
    wait_until(lambda: len(_stream(lifecycle.redis, job.id)) >= 4, 20, what="the two progress events")
    got = [(e.event, e.data) for e in _stream(lifecycle.redis, job.id)][2:]
    assert got == [
        ("progress", {"step": 1, "total": 1, "stage": "I"}),
        ("progress", {"step": 1, "total": 2, "stage": "II"}),
    ]
    job.progress(2, 2, stage="II")
    assert job.sink.take_held() == {"step": 2, "total": 2, "stage": "II"} and job.sink.take_held() is None


def test_record_rules(lifecycle: Lifecycle, env: WorkerEnv) -> None:
    """The scripts move the record and append its event together: events of a stale attempt or after the end are
    refused, the end happens once, and the record and its events then expire with the results."""
    record = _started(lifecycle, env)
    job_id, redis = record.id, lifecycle.redis
    assert lifecycle.event(job_id, 1, "progress", {"step": 1, "total": 2}, progress={"step": 1, "total": 2})
    assert lifecycle.event(job_id, 2, "progress", {"step": 2, "total": 2}, progress=None) is None  # stale attempt
    assert lifecycle.requeue(job_id, "someone-else", consume_retry=False) == 0  # not running there
    assert lifecycle.requeue(job_id, env.name, consume_retry=True) == 1  # a lost worker's job: retried
    assert lifecycle.read(job_id).state.value == "queued" and lifecycle.read(job_id).retries == 0
    (again,), _ = lifecycle.start(env.name, None, 1)
    assert again.record.attempt == 2
    done = JobRecord(**{**again.record.__dict__, "state": "succeeded", "files": ["a.png"], "main": "a.png"})
    done.state = type(record.state)("succeeded")
    assert lifecycle.finish(done, held=held_key(env.name), guard="attempt:1") is False  # the stale attempt's
    assert lifecycle.finish(done, held=held_key(env.name), guard="attempt:2") is True
    assert lifecycle.finish(done, held=held_key(env.name), guard="") is False  # once
    assert lifecycle.event(job_id, 2, "progress", {"step": 2, "total": 2}, progress=None) is None  # nothing after
    stream = _stream(redis, job_id)
    assert [e.event for e in stream] == ["status", "status", "progress", "status", "status", "done"]
    assert [e.data.get("status") for e in stream if e.event == "status"] == ["queued", "running", "queued", "running"]
    assert stream[-1].data["status"] == "succeeded" and stream[-1].data["attempts"] == 2
    assert 0 < redis.ttl(events.stream_key(job_id)) <= lifecycle.result_ttl_s
    assert 0 < redis.ttl(record_key(job_id)) <= lifecycle.result_ttl_s
    assert redis.llen(held_key(env.name)) == 0
    ids = [events.stream_id_order(e.id) for e in stream]
    assert ids == sorted(ids)


def test_the_stream_is_capped(lifecycle: Lifecycle, env: WorkerEnv) -> None:
    record = _started(lifecycle, env)
    lifecycle.maxlen = 50
    for step in range(300):
        lifecycle.event(record.id, 1, "progress", {"step": step, "total": 300}, progress=None)
    assert lifecycle.redis.xlen(events.stream_key(record.id)) < 300  # approximately 50 (MAXLEN ~ trims nodes)
    assert _stream(lifecycle.redis, record.id)[-1].data["step"] == 299


def test_channel_messages_parse(lifecycle: Lifecycle, env: WorkerEnv) -> None:
    pubsub = lifecycle.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.CHANNEL)
    record = _started(lifecycle, env)
    stream_id = lifecycle.event(record.id, 1, "progress", {"step": 1, "total": 4, "stage": "I"}, progress=None)
    got = []
    for _ in range(50):
        message = pubsub.get_message(timeout=0.1)
        if message:
            got.append(events.parse_message(message["data"]))
        if got and got[-1].event == "progress":
            break
    assert got[-1] == events.Event(record.id, stream_id, "progress", {"step": 1, "total": 4, "stage": "I"})
    assert events.parse_message(b"garbage") is None
    pubsub.close()


def test_preview_png_bytes_are_small(lifecycle: Lifecycle, env: WorkerEnv, settings: Settings) -> None:
    job = _context(lifecycle, env, settings, previews=True)
    job.progress(3, 3, None, torch.rand(1, 3, 64, 64) * 2 - 1)
    job.sink.flush()
    png = ((settings.results_dir / job.id) / events.PREVIEWS / "0003.png").read_bytes()
    assert Image.open(io.BytesIO(png)).size == (64, 64) and len(png) < 20_000
