"""The webhook options of every operation, through the API alone (real Redis, no worker): where they go, what is
refused at submission, and that they stay out of the job's parameters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.operations import OPERATIONS
from core.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOOK = "http://127.0.0.1:9/hook"


def _client(redis_server, tmp_path, **extra) -> TestClient:
    settings = Settings(
        redis_url=redis_server.url,
        queue_name=f"hooks-{uuid.uuid4().hex[:8]}",
        results_dir=tmp_path,
        webhook_allow="127.0.0.1",
        **extra,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(redis_server, tmp_path) -> Iterator[TestClient]:
    with _client(redis_server, tmp_path, webhook_secret=SECRET) as c:
        yield c


def _problem(r, status: int, name: str, where: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["name"] == name and body["errors"][0]["in"] == where, body
    return body


def _properties(spec: dict, schema: dict) -> set[str]:
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    names = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names |= _properties(spec, part)
    return names


def test_every_operation_states_the_options() -> None:
    spec = create_app(Settings()).openapi()
    for op in OPERATIONS.values():
        post = spec["paths"][op.path]["post"]
        if op.transport == "query":
            names = {p["name"] for p in post["parameters"]}
        else:
            (content,) = post["requestBody"]["content"].values()
            names = _properties(spec, content["schema"])
        assert {"webhook", "webhook_events"} <= names, op.path


def test_query_and_form_operations_take_a_webhook(client: TestClient) -> None:
    r = client.post("/mnist/sample", params={"digit": 2, "webhook": HOOK, "webhook_events": ["progress", "start"]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["webhook"] == {
        "url": HOOK,
        "events": ["start", "progress"],
        "state": None,
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
    }
    assert "webhook" not in body["params"] and "webhook_events" not in body["params"]
    assert client.get(f"/jobs/{body['id']}").json()["webhook"] == body["webhook"]

    r = client.post("/sample", data={"prompt": "a cat", "webhook": HOOK})
    assert r.status_code == 202, r.text
    assert r.json()["webhook"]["events"] == ["completed"]
    assert client.post("/mnist/sample", params={"digit": 2}).json()["webhook"] is None


def test_refused_targets_name_the_field_where_it_was_sent(client: TestClient) -> None:
    body = _problem(client.post("/mnist/sample", params={"webhook": "http://10.0.0.1/h"}), 422, "webhook", "query")
    assert body["type"] == "urn:problem:webhook-refused" and "private" in body["detail"]
    body = _problem(
        client.post("/sample", data={"prompt": "a", "webhook": "http://169.254.169.254/"}), 422, "webhook", "body"
    )
    assert "metadata" in body["detail"]
    _problem(client.post("/mnist/sample", params={"webhook": "ftp://127.0.0.1/x"}), 422, "webhook", "query")
    _problem(client.post("/mnist/sample", params={"webhook_events": "start"}), 422, "webhook_events", "query")
    _problem(
        client.post("/mnist/sample", params={"webhook": HOOK, "webhook_events": "finished"}),
        422,
        "webhook_events[0]",
        "query",
    )


def test_without_a_secret_webhooks_are_refused(redis_server, tmp_path) -> None:
    with _client(redis_server, tmp_path) as c:
        r = c.post("/mnist/sample", params={"digit": 1, "webhook": HOOK})
        assert r.status_code == 503 and r.json()["type"] == "urn:problem:webhooks-unavailable"
        assert c.post("/mnist/sample", params={"digit": 1}).status_code == 202


def test_an_idempotency_key_covers_the_webhook(client: TestClient) -> None:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/mnist/sample", params={"digit": 1, "webhook": HOOK}, headers=headers)
    again = client.post("/mnist/sample", params={"digit": 1, "webhook": HOOK}, headers=headers)
    assert first.status_code == again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/mnist/sample", params={"digit": 1, "webhook": HOOK + "2"}, headers=headers)
    assert other.status_code == 422 and other.json()["type"] == "urn:problem:idempotency-key-reused"


def test_redeliver_needs_an_ended_job_with_a_webhook(client: TestClient) -> None:
    queued = client.post("/mnist/sample", params={"digit": 1, "webhook": HOOK}).json()
    r = client.post(f"/jobs/{queued['id']}/webhook/redeliver")
    assert r.status_code == 409 and r.json()["type"] == "urn:problem:job-not-finished"
    plain = client.post("/mnist/sample", params={"digit": 1}).json()
    r = client.post(f"/jobs/{plain['id']}/webhook/redeliver")
    assert r.status_code == 409 and r.json()["type"] == "urn:problem:no-webhook"
    assert client.post(f"/jobs/{'0' * 32}/webhook/redeliver").status_code == 404
    # a queued job canceled: it ended, and its webhook (completed) is queued by the cancel itself
    canceled = client.post(f"/jobs/{queued['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["webhook"]["state"] == "pending"
    r = client.post(f"/jobs/{queued['id']}/webhook/redeliver")
    assert r.status_code == 202 and r.json()["webhook"]["state"] == "pending"
