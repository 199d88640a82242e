"""Redis commands per job, counted with ``INFO commandstats`` on a dedicated redis-server.

A fresh stack (redis-server, one worker with the shipped MNIST checkpoints, uvicorn) runs ``--jobs`` jobs one after
the other (``POST /mnist/sample?digit=3&n=1`` with ``Prefer: wait``: no polling), first without a webhook, then with
one (``completed``, to a receiver on loopback that answers 200). The background of the idle stack (the worker's
claim loop and heartbeats, the deliverer's look for due deliveries) is measured over an idle stretch just before
and subtracted. Prints the commands per job, by command, for both.

    .venv/bin/python bench/redis_commands.py --jobs 20
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.receiver import Receiver  # noqa: E402
from tests.support import RedisServer, Stack, wait_until  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"redis-commands-bench-secret-0123").decode()


def stats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before) if after.get(k, 0) != before.get(k, 0)
    }


def run(stack: Stack, client: redis.Redis, jobs: int, webhook: str | None, receiver: Receiver, idle_s: float) -> dict:
    idle0 = stats(client)
    time.sleep(idle_s)
    idle = delta(idle0, stats(client))
    start, t0 = stats(client), time.monotonic()
    for i in range(jobs):
        params: dict[str, object] = {"digit": 3, "n": 1, "seed": i}
        if webhook:
            params["webhook"] = webhook
        r = stack.client.post("/mnist/sample", params=params, headers={"Prefer": "wait=30"})
        assert r.status_code == 200, r.text
    if webhook:
        wait_until(lambda: len(receiver.at("/bench")) >= jobs, 60, what="every delivery")
        time.sleep(1.0)  # the last settle
    elapsed = time.monotonic() - t0
    total = delta(start, stats(client))
    per_job = {k: (v - idle.get(k, 0) * elapsed / idle_s) / jobs for k, v in total.items()}
    return {k: round(v, 2) for k, v in sorted(per_job.items()) if abs(v) >= 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--no-webhook", action="store_true", help="only the jobs without a webhook")
    args = parser.parse_args()
    server = RedisServer().start()
    receiver = Receiver().start()
    env = {
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW": "127.0.0.1",
        "WORKER_HEARTBEAT_S": "5",
        "WORKER_DEAD_AFTER_S": "30",
        "WORKER_MAINTENANCE_S": "15",
    }
    stack = Stack(server.url, env, Path(tempfile.mkdtemp(prefix="redis-commands-")))
    client = redis.Redis.from_url(server.url)
    try:
        stack.start_api()
        stack.start_worker()
        for i in range(3):  # warm up (first imports, first script loads)
            stack.client.post("/mnist/sample", params={"digit": 1, "n": 1, "seed": i}, headers={"Prefer": "wait=30"})
        results = {"no webhook": run(stack, client, args.jobs, None, receiver, args.idle_s)}
        if not args.no_webhook:
            hook = receiver.url("/bench")
            results["webhook (completed)"] = run(stack, client, args.jobs, hook, receiver, args.idle_s)
    finally:
        stack.stop()
        receiver.stop()
        server.stop()
    names = sorted({k for r in results.values() for k in r})
    print(f"Redis commands per job ({args.jobs} jobs each; idle background subtracted)\n")
    print("| command | " + " | ".join(results) + " |")
    print("| --- | " + " | ".join("---:" for _ in results) + " |")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r.get(name, 0):.2f}" for r in results.values()) + " |")
    print("| **all** | " + " | ".join(f"**{sum(r.values()):.1f}**" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
