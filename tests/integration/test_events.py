"""GET /jobs/{id}/events end to end: real Redis, worker processes and uvicorn; the stream as a client reads it."""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.integration.test_reliability import enqueue_raw
from tests.sse import Sse, parse, read_events
from tests.support import Stack, wait_until


def _stored(events: list[Sse]) -> list[Sse]:
    return [e for e in events if e.id is not None]


def _order(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)


def _submit(stack: Stack, **params: object) -> str:
    r = stack.client.post("/mnist/sample", params=params)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_events_of_a_job_in_order_with_previews_and_a_trajectory(make_stack) -> None:
    stack = make_stack()
    job_id = _submit(stack, digit=3, n=2, steps=12, seed=1, previews="true", trajectory="true")
    got: list[Sse] = []
    reader = threading.Thread(target=lambda: got.extend(read_events(stack.client, job_id, timeout=120)))
    reader.start()  # connected while the job waits for a worker: the live path, not only the backlog
    wait_until(lambda: stack.client.get(f"/jobs/{job_id}").json()["status"] == "queued", 10, what="queued")
    time.sleep(0.5)
    stack.start_worker()
    reader.join(120)
    assert not reader.is_alive(), "the stream did not end at the terminal event"

    # no live worker yet when it was read: no ETA
    assert got[0].event == "queue" and got[0].data == {"position": 0, "eta_s": None} and got[0].id is None
    stored = _stored(got)
    ids = [_order(e.id) for e in stored]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    names = [e.event for e in stored]
    assert names[:2] == ["status", "status"] and names[-1] == "done" and names.count("done") == 1
    assert stored[0].data == {"status": "queued"}
    assert stored[1].data == {"status": "running", "attempt": 1}
    assert set(names[2:-1]) == {"progress", "preview"}
    steps = [e.data["step"] for e in stored if e.event == "progress"]
    assert steps == sorted(steps) and steps[-1] == 12 and all(e.data["total"] == 12 for e in stored[2:-1])
    previews = [e.data for e in stored if e.event == "preview"]
    assert [p["step"] for p in previews] == [5, 10, 12]  # every PREVIEW_EVERY (5) steps and the last
    for p in previews:
        assert p["url"] == f"/jobs/{job_id}/previews/{p['name']}" and p["name"] == f"{p['step']:04d}.png"
        r = stack.client.get(p["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size == (112, 112)  # one 28x28 digit, upscaled 4x

    done = stored[-1].data
    assert done["status"] == "succeeded" and done["id"] == job_id and done["error"] is None
    assert set(done["results"]) == {"samples.png", "trajectory.gif", "trajectory.png", "manifest.json"}
    # the terminal event comes once the job's status is stored: its URLs answer at once
    assert stack.client.get(done["result_url"]).status_code == 200
    assert done == stack.job(job_id)
    gif = Image.open(io.BytesIO(stack.client.get(done["results"]["trajectory.gif"]).content))
    assert gif.size == (112, 112) and gif.n_frames >= 3
    strip = Image.open(io.BytesIO(stack.client.get(done["results"]["trajectory.png"]).content))
    assert strip.size == (3 * 112, 112)  # the three preview frames side by side
    manifest = stack.client.get(done["results"]["manifest.json"]).json()
    assert manifest["request"]["previews"] is True and manifest["files"]["trajectory.gif"]["frames"] == 3


def test_resume_with_last_event_id_loses_and_repeats_nothing(stack: Stack) -> None:
    job_id = _submit(stack, digit=1, n=50, steps=200, seed=2)
    first = read_events(stack.client, job_id, until=lambda e: e.event == "progress")
    last_id = _stored(first)[-1].id
    rest = read_events(stack.client, job_id, last_event_id=last_id, timeout=120)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "succeeded"
    everything = read_events(stack.client, job_id)  # after the end: the whole stream at once
    assert [e.id for e in _stored(everything)] == [e.id for e in _stored(first) + _stored(rest)]
    assert [e.data for e in _stored(everything)] == [e.data for e in _stored(first) + _stored(rest)]
    # resuming just before the end gives the terminal event alone; resuming after it ends at once
    stored = _stored(everything)
    tail = read_events(stack.client, job_id, last_event_id=stored[-2].id)
    assert [e.event for e in tail] == ["done"] and tail[0].id == stored[-1].id
    t0 = time.monotonic()
    assert read_events(stack.client, job_id, last_event_id=stored[-1].id) == []
    assert time.monotonic() - t0 < 5


def test_a_canceled_job_ends_its_stream_queued_or_running(make_stack) -> None:
    stack = make_stack()
    queued = _submit(stack, digit=1, n=1, steps=2)
    events: list[Sse] = []
    reader = threading.Thread(target=lambda: events.extend(read_events(stack.client, queued)))
    reader.start()
    wait_until(lambda: stack.client.get("/readyz").json()["queue_depth"] == 1, 10, what="the job queued")
    time.sleep(0.3)
    assert stack.client.post(f"/jobs/{queued}/cancel").status_code == 202
    reader.join(10)
    assert not reader.is_alive()
    assert [e.event for e in _stored(events)] == ["status", "done"]
    assert events[-1].data["status"] == "canceled" and events[-1].data["finished_at"]

    stack.start_worker()
    running = _submit(stack, digit=1, n=100, steps=500)
    seen = read_events(stack.client, running, until=lambda e: e.event == "progress")
    assert stack.client.post(f"/jobs/{running}/cancel").status_code == 202
    t0 = time.monotonic()
    rest = read_events(stack.client, running, last_event_id=_stored(seen)[-1].id, timeout=20)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "canceled"
    assert time.monotonic() - t0 < 5
    assert rest[-1].data["progress"]["step"] < 500


def test_a_failed_job_ends_its_stream_with_the_error(stack: Stack) -> None:
    job_id = enqueue_raw(stack, "tests.fault_jobs.bug")
    events = read_events(stack.client, job_id, timeout=60)
    assert [e.event for e in _stored(events)] == ["status", "status", "done"]
    assert events[-1].data["status"] == "failed" and events[-1].data["error_code"] == "internal-error"


def test_a_job_whose_worker_died_still_gets_its_terminal_event(make_stack) -> None:
    # no retry: the live worker's recovery fails the job and pushes its done event
    stack = make_stack(JOB_RETRIES="0", EVENTS_KEEPALIVE_S="1")
    victim = stack.start_worker()
    job_id = _submit(stack, digit=1, n=100, steps=500)
    seen = read_events(stack.client, job_id, until=lambda e: e.event == "progress")
    stack.kill_worker(victim)
    stack.start_worker()  # the live worker whose maintenance finds the abandoned job
    rest = read_events(stack.client, job_id, last_event_id=_stored(seen)[-1].id, timeout=90)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "failed"
    assert "died" in rest[-1].data["error"]


def test_unknown_and_malformed(stack: Stack) -> None:
    for path, status in [
        (f"/jobs/{'0' * 32}/events", 404),
        ("/jobs/not-an-id/events", 404),
        (f"/jobs/{'0' * 32}/previews/0005.png", 404),
    ]:
        r = stack.client.get(path)
        assert r.status_code == status and r.headers["content-type"] == "application/problem+json", r.text
    job_id = _submit(stack, digit=1, n=1, steps=2)
    r = stack.client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert r.status_code == 422 and r.json()["errors"][0]["name"] == "Last-Event-ID"
    for name in ("..%2Fmanifest.json", "0005.gif", "x.png", "..%2F..%2Finputs%2Fimage.png"):
        assert stack.client.get(f"/jobs/{job_id}/previews/{name}").status_code == 404


def test_a_hundred_listeners_while_healthz_answers_within_100ms(make_stack) -> None:
    stack = make_stack(EVENTS_KEEPALIVE_S="2")
    job_id = _submit(stack, digit=1, n=1, steps=2)  # no worker: it stays queued
    base = str(stack.client.base_url)
    n = 100

    async def listen(client: httpx.AsyncClient, opened: list[int]) -> list[Sse]:
        async with client.stream("GET", f"/jobs/{job_id}/events") as r:
            assert r.status_code == 200
            lines: list[str] = []
            out: list[Sse] = []
            async for line in r.aiter_lines():
                lines.append(line)
                if line == "":
                    out = list(parse(lines))
                    if len(out) == 1 and out[0].event == "queue":
                        opened.append(1)
                    if out and out[-1].event == "done":
                        return out
            return out

    async def main() -> tuple[list[float], list[list[Sse]]]:
        limits = httpx.Limits(max_connections=n + 5, max_keepalive_connections=n + 5)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            opened: list[int] = []
            tasks = [asyncio.create_task(listen(client, opened)) for _ in range(n)]
            deadline = time.monotonic() + 60
            while len(opened) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert len(opened) == n, f"only {len(opened)} streams opened"
            await asyncio.sleep(2.5)  # a keep-alive tick and its reconciliation pass with all of them open
            latencies = []
            async with httpx.AsyncClient(base_url=base, timeout=5) as probe:
                for _ in range(20):
                    t0 = time.perf_counter()
                    r = await probe.get("/healthz")
                    latencies.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    await asyncio.sleep(0.05)
                r = await probe.post(f"/jobs/{job_id}/cancel")
                assert r.status_code == 202
            results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            return latencies, results

    latencies, results = asyncio.run(main())
    assert statistics.median(latencies) < 0.1 and sorted(latencies)[-2] < 0.1, latencies
    for events in results:
        assert events[-1].event == "done" and events[-1].data["status"] == "canceled"
        assert [e.event for e in events if e.id] == ["status", "done"]


@pytest.mark.parametrize("job_params", [{"digit": 2, "n": 1, "steps": 3}])
def test_previews_off_by_default(stack: Stack, job_params: dict) -> None:
    job_id = _submit(stack, **job_params)
    events = read_events(stack.client, job_id)
    assert "preview" not in {e.event for e in events}
    assert set(events[-1].data["results"]) == {"samples.png", "manifest.json"}
    assert "previews" not in events[-1].data["params"] and "trajectory" not in events[-1].data["params"]
