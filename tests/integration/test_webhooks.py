"""Webhooks on real processes: a redis-server, the API (which delivers), a worker, and a receiver on loopback
(allowed through WEBHOOK_ALLOW). Deliveries are signed the Standard Webhooks way and checked with the
`standardwebhooks` package, as a receiver would."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from redis import Redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.lifecycle import Lifecycle, service_queue
from core.protocol import JobState, held_key
from core.webhooks import SCHEDULE_KEY
from tests.receiver import Answer, Receiver
from tests.support import RedisServer, Stack, free_port, wait_until

SECRET = "whsec_" + base64.b64encode(b"webhook-test-secret-0123456789ab").decode()
ENV = {
    "WEBHOOK_SECRET": SECRET,
    "WEBHOOK_ALLOW": "127.0.0.1",
    "WEBHOOK_RETRY_INITIAL_S": "0.2",
    "WEBHOOK_TIMEOUT_S": "2",
}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def hooks(redis_server, mnist_checkpoints, tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(redis_server.url, {**mnist_checkpoints, **ENV}, tmp_path_factory.mktemp("hooks"))
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


def run_job(stack: Stack, webhook: str, **params: object) -> dict:
    """A MNIST job with a webhook, waited for (Prefer: wait): its final body, as its done event carried it."""
    query = {"digit": 3, "n": 2, "seed": 1, "webhook": webhook, **params}
    r = stack.client.post("/mnist/sample", params=query, headers={"Prefer": "wait=60"})
    assert r.status_code == 200, r.text
    return r.json()


def hook_state(stack: Stack, job_id: str, state: str, timeout: float = 30) -> dict:
    return wait_until(
        lambda: (w := stack.job(job_id)["webhook"])["state"] == state and w, timeout, what=f"webhook {state}"
    )


def verified(received) -> dict:
    return Webhook(SECRET).verify(received.body, received.headers)


def test_completed_is_signed_and_is_the_job_body(hooks: Stack, receiver: Receiver) -> None:
    final = run_job(hooks, receiver.url("/signed"))
    assert final["status"] == "succeeded"
    assert final["webhook"] == {
        "url": receiver.url("/signed"),
        "events": ["completed"],
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
    }
    assert "webhook" not in final["params"]  # a job option, not a parameter of the job
    (got,) = receiver.wait_for("/signed")
    assert got.headers["webhook-id"] == f"{final['id']}-completed"
    assert got.headers["content-type"] == "application/json"
    payload = verified(got)
    assert payload == final  # exactly the body of its done event
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"succeeded", b"failed"), got.headers)
    state = hook_state(hooks, final["id"], "delivered")
    assert state["attempts"] == 1 and state["last_status"] == 200 and state["last_error"] is None
    assert state["delivered_at"]
    now = hooks.job(final["id"])
    assert {k: v for k, v in now.items() if k != "webhook"} == {k: v for k, v in payload.items() if k != "webhook"}

    # sent again on request: the same message (same webhook-id and body), a new attempt
    r = hooks.client.post(f"/jobs/{final['id']}/webhook/redeliver")
    assert r.status_code == 202 and r.json()["webhook"]["state"] == "pending"
    first, again = receiver.wait_for("/signed", 2)
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert verified(again) == payload
    assert hook_state(hooks, final["id"], "delivered")["attempts"] == 2


def test_start_and_progress_are_delivered_and_throttled(hooks: Stack, receiver: Receiver) -> None:
    final = run_job(
        hooks,
        receiver.url("/all"),
        n=100,
        steps=400,
        sampler="euler",
        webhook_events=["start", "progress", "completed"],
    )
    assert final["webhook"]["events"] == ["start", "progress", "completed"]
    job = final["id"]
    receiver.wait_for("/all", 2)
    wait_until(lambda: any(r.headers["webhook-id"] == f"{job}-completed" for r in receiver.at("/all")), 30)
    got = [r for r in receiver.at("/all") if r.headers["webhook-id"].startswith(job)]
    ids = [r.headers["webhook-id"] for r in got]
    # deliveries are sent concurrently: a job's arrive in no promised order
    (start,) = [r for r in got if r.headers["webhook-id"] == f"{job}-start-1"]
    assert start.headers["webhook-event"] == "start" and verified(start)["status"] == "running"
    progress = [r for r in got if "-progress-" in r.headers["webhook-id"]]
    assert progress, f"no progress delivery in {ids} (the job ran {final['started_at']} .. {final['finished_at']})"
    for r in progress:
        body = verified(r)
        assert body["status"] == "running" and 0 < body["progress"]["step"] <= 400
    # queued at most every 0.5 s (the stream id of the event that queued it is in its webhook-id)
    stamps = [int(r.headers["webhook-id"].rsplit("-progress-", 1)[1].split("-")[0]) for r in progress]
    assert all(b - a >= 490 for a, b in itertools.pairwise(stamps)), stamps
    (completed,) = [r for r in got if r.headers["webhook-id"] == f"{job}-completed"]
    assert verified(completed)["status"] == "succeeded" and completed.headers["webhook-event"] == "completed"


def test_a_start_sent_after_the_job_ended_shows_the_start(hooks: Stack, receiver: Receiver) -> None:
    """A one-step job ends long before the deliverer's next look: its start still shows the job as it started."""
    final = run_job(hooks, receiver.url("/quick"), webhook_events=["start", "completed"])
    got = receiver.wait_for("/quick", 2)
    by_id = {r.headers["webhook-id"]: verified(r) for r in got}
    start = by_id[f"{final['id']}-start-1"]
    assert start["status"] == "running" and start["progress"] is None and start["finished_at"] is None
    assert start["results"] == {} and start["webhook"]["state"] is None
    assert start["started_at"] == final["started_at"] and start["params"] == final["params"]
    assert by_id[f"{final['id']}-completed"] == final


def test_a_500_is_retried_with_the_same_webhook_id(hooks: Stack, receiver: Receiver) -> None:
    receiver.answers["/flaky"] = [Answer(500), Answer(503), Answer(200)]
    final = run_job(hooks, receiver.url("/flaky"))
    got = receiver.wait_for("/flaky", 3)
    assert {r.headers["webhook-id"] for r in got} == {f"{final['id']}-completed"}
    assert all(verified(r) == final for r in got)
    state = hook_state(hooks, final["id"], "delivered")
    assert state["attempts"] == 3 and state["last_status"] == 200


def test_a_receiver_that_is_down_does_not_delay_the_job(hooks: Stack, receiver: Receiver) -> None:
    receiver.answers["/hang"] = [Answer(200, delay_s=8)]
    closed = f"http://127.0.0.1:{free_port()}/nobody"
    began = time.monotonic()
    hanging = run_job(hooks, receiver.url("/hang"))
    refused = run_job(hooks, closed)
    assert time.monotonic() - began < 20
    for final in (hanging, refused):
        assert final["status"] == "succeeded" and final["error"] is None
    state = hook_state(hooks, refused["id"], "retrying")
    assert state["last_status"] is None and "network error" in state["last_error"]
    state = hook_state(hooks, hanging["id"], "retrying")
    assert "no answer within 2 s" in state["last_error"]
    assert hooks.job(hanging["id"])["status"] == "succeeded"


def test_a_redirect_is_a_failure_not_followed(hooks: Stack, receiver: Receiver) -> None:
    receiver.answers["/moved"] = [Answer(302, {"location": receiver.url("/elsewhere")})]
    final = run_job(hooks, receiver.url("/moved"))
    state = hook_state(hooks, final["id"], "failed")
    assert state["last_status"] == 302 and state["attempts"] == 1
    assert "redirect 302" in state["last_error"] and "/elsewhere" in state["last_error"]
    assert "not followed" in state["last_error"]
    time.sleep(1)
    assert receiver.at("/elsewhere") == [] and len(receiver.at("/moved")) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7/hook",  # private
        "http://169.254.169.254/latest/meta-data/",  # metadata
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::1]:9/hook",  # loopback, but only 127.0.0.1 is allowed
        "http://[::ffff:10.0.0.1]/hook",  # a private address inside IPv6
        "http://93.184.216.34/hook",  # public, but WEBHOOK_ALLOW lists no `public`
        "ftp://127.0.0.1/hook",
        "http://no-such-host.invalid/hook",
    ],
)
def test_a_target_outside_the_allow_list_is_refused_at_submission(hooks: Stack, url: str) -> None:
    r = hooks.client.post("/mnist/sample", params={"digit": 1, "webhook": url})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["name"] == "webhook" and body["errors"][0]["in"] == "query"


def test_deliveries_pending_across_restarts_are_sent(redis_server, mnist_checkpoints, tmp_path) -> None:
    """The receiver is down when the job ends; the API (which delivers) is killed and the worker restarted; once
    the receiver is up and an API runs again, the delivery arrives, with the webhook-id it had."""
    receiver = Receiver()  # not listening yet: connection refused
    stack = Stack(redis_server.url, {**mnist_checkpoints, **ENV}, tmp_path)
    try:
        stack.start_api()
        worker = stack.start_worker()
        final = run_job(stack, receiver.url("/later"))
        assert hook_state(stack, final["id"], "retrying")["attempts"] >= 1
        stack.api.kill()  # dies without a goodbye, maybe holding the delivery's lease
        stack.api.wait(10)
        worker.terminate()
        worker.wait(30)
        receiver.start()
        stack.start_api()
        stack.start_worker()
        (got,) = receiver.wait_for("/later", 1, timeout=60)
        assert got.headers["webhook-id"] == f"{final['id']}-completed"
        assert verified(got) == final
        assert hook_state(stack, final["id"], "delivered")["last_status"] == 200
    finally:
        stack.stop()
        receiver.stop()


# ---- what a webhook costs in Redis commands ---------------------------------------------------------------------

#: The commands of each transition of a job without a webhook (INFO commandstats), as measured on main before
#: webhooks (6d22a93): a job without a webhook must not pay a single one more.
PLAIN = {
    "submit": {"multi": 1, "hset": 2, "rpush": 1, "sadd": 1, "xadd": 1, "set": 1, "exec": 1},
    "claim": {"blmove": 1},
    "start": {"evalsha": 1, "hmget": 1, "hset": 1, "xadd": 1, "publish": 1, "zadd": 1},
    "event": {"evalsha": 1, "hmget": 1, "hset": 1, "xadd": 1, "publish": 1},
    "finish": {
        "evalsha": 1,
        "hmget": 1,
        "hset": 1,
        "xadd": 2,
        "publish": 2,
        "expire": 2,
        "lrem": 1,
        "zrem": 1,
        "zadd": 1,
    },
}


def _commands(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"}


def _transitions(lifecycle, job_id: str, **hook) -> dict[str, dict[str, int]]:
    """The commands of each transition of one job: submit, claim, start, one progress event, finish."""
    out: dict[str, dict[str, int]] = {}

    def step(name, call):
        before = _commands(lifecycle.redis)
        value = call()
        after = _commands(lifecycle.redis)
        out[name] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        return value

    func = "workers.jobs.mnist_sample"
    step(
        "submit",
        lambda: lifecycle.submit(job_id, kind="mnist_sample", func=func, params={}, retries=1, timeout_s=60, **hook),
    )
    first = step("claim", lambda: lifecycle.claim("w", 1))
    (started,), _ = step("start", lambda: lifecycle.start("w", first, 0))
    step(
        "event",
        lambda: lifecycle.event(job_id, 1, "progress", {"step": 1, "total": 2}, progress={"step": 1, "total": 2}),
    )
    done = replace(
        started.record, state=JobState.succeeded, finished="2026-01-01T00:00:00.000Z", files=["a.png"], main="a.png"
    )
    step(
        "finish",
        lambda: lifecycle.finish(done, held=held_key("w"), guard="attempt:1", progress_event={"step": 2, "total": 2}),
    )
    return out


def test_a_job_without_a_webhook_pays_no_extra_redis_command() -> None:
    """On a redis-server of its own (so INFO commandstats counts nothing else)."""
    server = RedisServer().start()
    try:
        client = Redis.from_url(server.url)
        lifecycle = Lifecycle(client, service_queue("q", client), result_ttl_s=3600, tombstone_ttl_s=3600)
        _transitions(lifecycle, "0" * 32)  # the scripts' first load
        assert _transitions(lifecycle, "1" * 32) == PLAIN
        # a webhook that wants every event: one ZADD into the schedule at its start, its throttled progress and
        # its end (the rest rides on commands the transitions make anyway)
        hook = {"webhook": "https://example.com/h", "webhook_events": ["start", "progress", "completed"]}
        extra = {name: {**commands} for name, commands in PLAIN.items()}
        for name in ("start", "event", "finish"):
            extra[name]["zadd"] = extra[name].get("zadd", 0) + 1
        assert _transitions(lifecycle, "2" * 32, **hook) == extra
        assert {m.decode() for m in client.zrange(SCHEDULE_KEY, 0, -1)} == {
            f"{'2' * 32}:start",
            f"{'2' * 32}:progress",
            f"{'2' * 32}:completed",
        }
    finally:
        server.stop()
