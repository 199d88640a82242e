"""The per-job cost of the service in Redis commands, counted by the server (issue 21): a job submitted with
`Prefer: wait` and downloaded costs at most 30 commands, the worker's idle upkeep included. With a tenants file
(issue 25) a job costs more, and the second test says how much: 35 for a tenant without limits (the submission's
wake-up PUBLISH, and the fair-share claim's state and per-tenant LMPOPs), 42 for one with both `max_queued` (3: the
reservation script and its INCR, the DECR at the end) and `rate` (4: the fixed window's script and INCRBY, then GET
and TTL for the RateLimit headers)."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from tests.support import Stack

MAX_COMMANDS_PER_JOB = 30
MAX_COMMANDS_PER_JOB_OF_A_LIMITED_TENANT = 45
KEY = "overhead-key-4b3a2f1e0d9c"


def _commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def _commands_per_job(stack: Stack, headers: dict[str, str]) -> tuple[float, list[tuple[str, float]]]:
    stack.start_worker()
    client = redis.Redis.from_url(stack.redis_url)
    http = stack.client

    def job(seed: int) -> None:
        r = http.post(
            "/mnist/sample", params={"digit": 7, "n": 1, "seed": seed}, headers={"Prefer": "wait=30", **headers}
        )
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        png = http.get(r.json()["result_url"], headers=headers)
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
    breakdown = sorted(((k, v / n) for k, v in calls.items() if v), key=lambda kv: -kv[1])
    return sum(calls.values()) / n, breakdown


# the default heartbeat and maintenance periods, as a user runs them (the test stacks shorten them)
UPKEEP = {"WORKER_HEARTBEAT_S": "5", "WORKER_DEAD_AFTER_S": "30", "WORKER_MAINTENANCE_S": "15"}


def test_a_job_with_prefer_wait_costs_at_most_30_redis_commands(make_stack) -> None:
    stack: Stack = make_stack(**UPKEEP)
    per_job, breakdown = _commands_per_job(stack, {})
    assert per_job <= MAX_COMMANDS_PER_JOB, (per_job, breakdown)


def test_a_job_of_a_tenant_with_limits_costs_what_the_docs_say(make_stack, tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.a]\nkeys = ["{KEY}"]\nweight = 2\nmax_queued = 100\nrate = "100000/minute"\n'
        '[tenants.b]\nkeys = ["another-key-8c7b6a5f4e3d"]\n'
    )
    stack: Stack = make_stack(TENANTS_FILE=str(tenants), **UPKEEP)
    per_job, breakdown = _commands_per_job(stack, {"X-API-Key": KEY})
    assert per_job <= MAX_COMMANDS_PER_JOB_OF_A_LIMITED_TENANT, (per_job, breakdown)
