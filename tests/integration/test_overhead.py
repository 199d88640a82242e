"""The per-job cost of the service in Redis commands, counted by the server (issue 21): a job submitted with
`Prefer: wait` and downloaded costs at most 30 commands, the worker's idle upkeep included."""

from __future__ import annotations

import time

import redis

from tests.support import Stack

MAX_COMMANDS_PER_JOB = 30


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def test_a_job_with_prefer_wait_costs_at_most_30_redis_commands(make_stack) -> None:
    # the default heartbeat and maintenance periods, as a user runs them (the test stacks shorten them)
    stack: Stack = make_stack(WORKER_HEARTBEAT_S="5", WORKER_DEAD_AFTER_S="30", WORKER_MAINTENANCE_S="15")
    stack.start_worker()
    client = redis.Redis.from_url(stack.redis_url)
    http = stack.client

    def job(seed: int) -> None:
        r = http.post("/mnist/sample", params={"digit": 7, "n": 1, "seed": seed}, headers={"Prefer": "wait=30"})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        png = http.get(r.json()["result_url"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    for seed in range(3):  # warm up: scripts loaded, connections open
        job(seed)
    time.sleep(0.2)
    before = _commandstats(client)
    n = 30
    for seed in range(100, 100 + n):
        job(seed)
    after = _commandstats(client)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls.pop("info", None)  # this test's own reads
    per_job = sum(calls.values()) / n
    breakdown = sorted(((k, v / n) for k, v in calls.items() if v), key=lambda kv: -kv[1])
    assert per_job <= MAX_COMMANDS_PER_JOB, (per_job, breakdown)
