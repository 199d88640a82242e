"""The result cache on real processes: a seeded request answered again without the worker, with the same bytes, in
under 100 ms; what misses (no seed, another parameter, cache=false, other model weights); expiry and deletes.
RELIABILITY.md names these."""

from __future__ import annotations

import time
from pathlib import Path

import redis as redis_client

from core.record import record_key
from tests.support import Stack, wait_until

WAIT = {"Prefer": "wait=30"}
SEEDED = {"digit": 4, "n": 3, "seed": 7}


def post(stack: Stack, params: dict) -> dict:
    r = stack.client.post("/mnist/sample", params=params, headers=WAIT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "succeeded", body
    return body


def png(stack: Stack, body: dict) -> bytes:
    r = stack.client.get(body["result_url"])
    assert r.status_code == 200
    return r.content


def hits(stack: Stack) -> float:
    for line in stack.client.get("/metrics").text.splitlines():
        if line.startswith('diffusion_cache_hits_total{operation="mnist_sample",tenant="default"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_seeded_request_again_is_answered_from_the_cache(stack: Stack) -> None:
    first = post(stack, SEEDED)
    assert first["cached"] is False and first["source"] is None
    began = time.perf_counter()
    r = stack.client.post("/mnist/sample", params=SEEDED, headers=WAIT)
    elapsed = time.perf_counter() - began
    second = r.json()
    assert r.status_code == 200 and r.headers["preference-applied"] == "wait=30"
    assert second["status"] == "succeeded" and second["cached"] is True and second["source"] == first["id"]
    assert elapsed < 0.1, elapsed
    assert second["id"] != first["id"] and second["params"] == first["params"]
    assert set(second["results"]) == set(first["results"])
    assert png(stack, second) == png(stack, first)
    manifest = stack.client.get(second["results"]["manifest.json"]).json()
    assert manifest["job_id"] == first["id"]  # the source's objects, by reference
    assert stack.client.get(f"/jobs/{second['id']}").json() == second
    assert hits(stack) == 1
    # it expires with its source
    redis = redis_client.Redis.from_url(stack.redis_url)
    own_ttl = redis.pttl(record_key(second["id"]))
    source_ttl = redis.pttl(record_key(first["id"]))
    assert own_ttl > 0 and abs(source_ttl - own_ttl) < 1000
    # its events: one done, as for any job
    events = stack.client.get(f"/jobs/{second['id']}/events").text
    assert events.count("event: done") == 1 and '"cached":true' in events


def test_what_does_not_hit(stack: Stack) -> None:
    first = post(stack, SEEDED | {"digit": 6})
    for params in (
        {"digit": 6, "n": 3},  # no seed: never cached
        {"digit": 6, "n": 3},
        SEEDED | {"digit": 6, "n": 4},  # another parameter
        SEEDED | {"digit": 6, "seed": 8},  # another seed
        SEEDED | {"digit": 6, "cache": "false"},  # bypassed
    ):
        body = post(stack, params)
        assert body["cached"] is False and body["source"] is None, params
    assert post(stack, SEEDED | {"digit": 6})["source"] == first["id"]  # (the bypass did not take the entry)


def test_deletes_a_cached_job_alone_and_a_source_leaves_the_cache(stack: Stack) -> None:
    params = SEEDED | {"digit": 8}
    source = post(stack, params)
    copy = post(stack, params)
    assert copy["cached"] is True
    assert stack.client.delete(f"/jobs/{copy['id']}").status_code == 204
    assert stack.client.get(f"/jobs/{copy['id']}").status_code == 410
    assert png(stack, source)  # the source's files are untouched
    again = post(stack, params)
    assert again["cached"] is True and again["source"] == source["id"]
    assert stack.client.delete(f"/jobs/{source['id']}").status_code == 204
    fresh = post(stack, params)
    assert fresh["cached"] is False  # the entry went with its source: the job ran again
    assert post(stack, params)["source"] == fresh["id"]


def test_other_model_weights_miss(make_stack, mnist_checkpoints: dict[str, str], tmp_path: Path) -> None:
    import torch

    from models.flow.checkpoint import save_model
    from models.flow.unet import UNetConfig, build_model

    torch.manual_seed(99)
    config = UNetConfig(conditioning="class", num_hiddens=8)
    other = tmp_path / "other_class.safetensors"
    save_model(build_model(config).eval(), config, other)
    stack: Stack = make_stack()
    worker = stack.start_worker()
    params = SEEDED | {"digit": 1}
    first = post(stack, params)
    assert post(stack, params)["cached"] is True
    worker.terminate()
    worker.wait(20)
    stack.start_worker(MNIST_CLASS_CHECKPOINT=str(other))
    time.sleep(1.1)  # the API's look at the live workers is at most a second old
    moved = post(stack, params)
    assert moved["cached"] is False and png(stack, moved) != png(stack, first)
    assert post(stack, params)["source"] == moved["id"]


def test_a_queued_source_is_not_a_hit(make_stack) -> None:
    """An entry whose job has not succeeded yet is no answer: the second request runs too."""
    stack: Stack = make_stack()
    stack.start_worker()
    post(stack, {"digit": 0, "n": 1, "seed": 1})  # the worker's digests are known now
    params = {"digit": 0, "n": 60, "steps": 200, "seed": 3}
    first = stack.client.post("/mnist/sample", params=params).json()
    second = stack.client.post("/mnist/sample", params=params).json()
    assert second["status"] in ("queued", "running") and second["cached"] is False
    for job in (first, second):
        wait_until(lambda job=job: stack.job(job["id"])["status"] == "succeeded", 120, what="both jobs")
    assert post(stack, params)["source"] == first["id"]


def test_an_idempotency_key_replays_a_cached_answer(stack: Stack) -> None:
    params = SEEDED | {"digit": 9}
    post(stack, params)
    headers = {**WAIT, "Idempotency-Key": "cached-answer-1"}
    first = stack.client.post("/mnist/sample", params=params, headers=headers)
    again = stack.client.post("/mnist/sample", params=params, headers=headers)
    assert first.json()["cached"] is True
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
