"""The API alone (real Redis, no worker): validation, problem+json, idempotency, 404/410, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from core.protocol import tombstone_key
from core.settings import Settings


@pytest.fixture
def settings(redis_server, tmp_path) -> Settings:
    return Settings(
        redis_url=redis_server.url, queue_name=f"api-{uuid.uuid4().hex[:8]}", results_dir=tmp_path, max_n=100
    )


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _problem(r, status: int, name: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:problem:") and body["title"]
    assert "Traceback" not in r.text
    if name:
        assert any(e["name"] == name for e in body["errors"]), body
        assert name in body["detail"]
    return body


@pytest.mark.parametrize(
    "params,name",
    [
        ({"digit": 10}, "digit"),
        ({"digit": -1}, "digit"),
        ({"digit": "seven"}, "digit"),
        ({"digit": 1.5}, "digit"),
        ({"n": 0}, "n"),
        ({"n": 101}, "n"),
        ({"steps": 0}, "steps"),
        ({"steps": 100000}, "steps"),
        ({"guidance": -1}, "guidance"),
        ({"guidance": "nan"}, "guidance"),
        ({"guidance": 1e9}, "guidance"),
        ({"sampler": "rk45"}, "sampler"),
        ({"seed": -3}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(client, params, name) -> None:
    _problem(client.post("/mnist/sample", params=params), 422, name)


@pytest.mark.parametrize(
    "params,detail",
    [
        # over a settings limit: the value, the limit and the setting that sets it
        ({"n": 101}, "n: 101 is over the limit of 100 (MAX_N)"),
        ({"steps": 100000}, "steps: 100000 is over the limit of 500 (MAX_STEPS)"),
        ({"guidance": "1e9"}, "guidance: 1e9 is over the limit of 30 (MAX_GUIDANCE)"),
        # fixed ranges and types
        ({"digit": 10}, "digit: must be at most 9"),
        ({"n": 0}, "n: must be at least 1"),
        ({"digit": "seven"}, "digit: must be a whole number"),
        ({"digit": 1.5}, "digit: must be a whole number"),
        ({"guidance": "nan"}, "guidance: must be a finite number"),
        ({"guidance": "x"}, "guidance: must be a number"),
        ({"sampler": "rk45"}, "sampler: must be one of euler, heun or midpoint"),
        ({"previews": "maybe"}, "previews: must be true or false"),
        ({"seed": 2**64}, f"seed: must be at most {2**63 - 1}"),
    ],
)
def test_messages_are_written_for_people(client, params, detail) -> None:
    body = _problem(client.post("/mnist/sample", params=params), 422)
    assert body["detail"] == detail
    assert [f"{e['name']}: {e['reason']}" for e in body["errors"]] == [detail]


def test_submit_answers_202_with_location_and_job_body(client) -> None:
    r = client.post("/mnist/sample", params={"digit": 3, "n": 2, "seed": 5})
    assert r.status_code == 202
    body = r.json()
    assert r.headers["location"] == f"/jobs/{body['id']}"
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    assert body["status"] == "queued" and body["queue_position"] == 0
    # the solver defaults (per model: steps) are filled in and echoed
    assert body["params"] == {"digit": 3, "n": 2, "steps": 1, "guidance": 1.5, "sampler": "midpoint", "seed": 5}
    unguided = client.post("/mnist/sample", params={"n": 2, "seed": 5}).json()["params"]
    assert (unguided["steps"], unguided["sampler"]) == (3, "midpoint")
    # a request that names them gets exactly those
    named = {"digit": 3, "n": 2, "steps": 50, "guidance": 5.0, "sampler": "euler", "seed": 5}
    assert client.post("/mnist/sample", params=named).json()["params"] == named
    assert client.get(f"/jobs/{body['id']}").json()["status"] == "queued"
    # a random seed is chosen and recorded when none is given
    seeded = client.post("/mnist/sample", params={"digit": 3}).json()
    assert isinstance(seeded["params"]["seed"], int)


def test_unknown_expired_and_malformed_ids(client, settings) -> None:
    _problem(client.get("/jobs/" + "0" * 32), 404)
    _problem(client.get("/jobs/../../etc/passwd"), 404)
    _problem(client.get("/jobs/not-an-id"), 404)
    expired = uuid.uuid4().hex
    Redis.from_url(settings.redis_url).set(tombstone_key(expired), "1")
    _problem(client.get(f"/jobs/{expired}"), 410)
    _problem(client.get(f"/jobs/{expired}/result"), 410)
    _problem(client.get("/nope"), 404)
    _problem(client.delete("/healthz"), 405)


def test_result_of_unfinished_job_is_409(client) -> None:
    job = client.post("/mnist/sample", params={"digit": 1}).json()
    _problem(client.get(f"/jobs/{job['id']}/result"), 409)
    _problem(client.get(f"/jobs/{job['id']}/files/..%2F..%2Fsecret"), 404)  # never served


def test_idempotency_key(client) -> None:
    h = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/mnist/sample", params={"digit": 2, "n": 3}, headers=h)
    again = client.post("/mnist/sample", params={"digit": 2, "n": 3}, headers=h)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    _problem(client.post("/mnist/sample", params={"digit": 2, "n": 4}, headers=h), 422, "Idempotency-Key")
    other = client.post("/mnist/sample", params={"digit": 2, "n": 3}, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert other.json()["id"] != first.json()["id"]


def test_cancel_queued_job_at_once_and_twice_is_409(client) -> None:
    job = client.post("/mnist/sample", params={"digit": 1}).json()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "canceled" and r.json()["cancel_requested"]
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "canceled"
    _problem(client.post(f"/jobs/{job['id']}/cancel"), 409)


def test_queue_full_is_503_with_retry_after(redis_server, tmp_path) -> None:
    s = Settings(
        redis_url=redis_server.url, queue_name=f"full-{uuid.uuid4().hex[:8]}", results_dir=tmp_path, max_queue_depth=2
    )
    with TestClient(create_app(s)) as c:
        for _ in range(2):
            assert c.post("/mnist/sample", params={"digit": 1}).status_code == 202
        r = c.post("/mnist/sample", params={"digit": 1})
        _problem(r, 503)
        assert r.headers["retry-after"] == "5"


def test_health_and_readiness_without_worker(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["redis"] is True and r.json()["workers"] == [] and r.json()["ready"] is False


def test_readiness_without_redis(tmp_path) -> None:
    from tests.support import free_port

    s = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", results_dir=tmp_path)
    with TestClient(create_app(s)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["redis"] is False
        _problem(c.post("/mnist/sample", params={"digit": 1}), 503)


def test_openapi_has_an_example_for_every_endpoint(client) -> None:
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            for p in op.get("parameters", []):
                if p["in"] in ("query", "path"):
                    assert "example" in str(p), (method, path, p["name"])
    assert "examples" in str(spec["components"]["schemas"]["JobBody"])
