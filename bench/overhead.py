"""Where a small job's time goes: Redis commands, round trips and CPU per job, by process, on a fresh local stack.

For each way a client waits (``poll``: submit, poll ``GET /jobs/{id}`` every 20 ms, download; ``wait``: submit
with ``Prefer: wait=60``, download), N sequential jobs of the default one-digit request. Per job it reports:

- Redis commands counted by the server (``INFO commandstats``, the worker's idle upkeep included), by command;
- CPU seconds of the API, the worker and redis-server (``/proc/<pid>/stat``), and the wall time;
- end to end against the worker's own model time (``manifest.json``): the service overhead.

With ``--profile`` it also samples the API and the worker with py-spy during the ``poll`` phase and prints the
functions with the most samples (own time and total time), so a cut is aimed at what shows.

    .venv/bin/python bench/overhead.py [--jobs 50] [--follow poll,wait] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from harness import local_service, percentile

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}


def redis_pid(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])


def one_job(http, follow: str, seed: int) -> tuple[float, float]:
    """(end to end seconds, the worker's model seconds) of one default one-digit job."""
    t0 = time.perf_counter()
    headers = {"Prefer": "wait=60"} if follow == "wait" else {}
    body = http.post("/mnist/sample", params={"digit": 7, "n": 1, "seed": seed}, headers=headers).json()
    while body["status"] not in ("succeeded", "failed", "canceled"):
        time.sleep(0.02)
        body = http.get(f"/jobs/{body['id']}").json()
    assert body["status"] == "succeeded", body
    assert http.get(body["result_url"]).status_code == 200
    total = time.perf_counter() - t0
    model = http.get(body["results"]["manifest.json"]).json()["timings"]["model_s"]
    return total, model


def measure(stack, follow: str, jobs: int, profile_dir: Path | None) -> dict:
    http = stack.client
    client = redis.Redis.from_url(stack.redis_url)
    pids = {"API": stack.api.pid, "worker": stack.workers[0].pid, "Redis": redis_pid(client)}
    for i in range(5):  # warm up
        one_job(http, follow, 10_000 + i)
    spies = []
    if profile_dir is not None:
        for name in ("API", "worker"):
            out = profile_dir / f"{follow}-{name}.txt"
            spies.append(
                subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(pids[name]),
                        "--format",
                        "raw",
                        "--gil",
                        "--rate",
                        "250",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(1.0)
    before_cmd, before_cpu = commandstats(client), {k: cpu_s(p) for k, p in pids.items()}
    t0 = time.perf_counter()
    totals, models = [], []
    for i in range(jobs):
        total, model = one_job(http, follow, i)
        totals.append(total)
        models.append(model)
    wall = time.perf_counter() - t0
    # the manifest reads above are part of the measurement loop but not of a job: count them out below
    after_cmd, after_cpu = commandstats(client), {k: cpu_s(p) for k, p in pids.items()}
    for spy in spies:
        spy.send_signal(2)
        spy.wait(30)
    calls = {k: after_cmd.get(k, 0) - before_cmd.get(k, 0) for k in after_cmd}
    calls.pop("info", None)
    calls = {k: v for k, v in calls.items() if v}
    overhead = [t - m for t, m in zip(totals, models, strict=True)]
    return {
        "follow": follow,
        "calls": calls,
        "cpu": {k: (after_cpu[k] - before_cpu[k]) / jobs for k in pids},
        "wall": wall / jobs,
        "e2e_p50": statistics.median(totals),
        "model_p50": statistics.median(models),
        "overhead_p50": statistics.median(overhead),
        "overhead_p90": percentile(overhead, 90),
        "jobs": jobs,
    }


def top_frames(path: Path, n: int = 15) -> list[tuple[str, float, float]]:
    """(function, own %, total %) from a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" for f in stack.split(";")
        ]
        own[frames[-1]] += k
        for frame in set(frames):
            total[frame] += k
    rows = sorted(total, key=lambda f: -own[f])[:n]
    return [(f, 100 * own[f] / samples, 100 * total[f] / samples) for f in rows if samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--follow", default="poll,wait")
    parser.add_argument("--profile", action="store_true", help="py-spy the API and the worker")
    args = parser.parse_args()
    profile_dir = Path(tempfile.mkdtemp(prefix="overhead-")) if args.profile else None
    if args.profile and not shutil.which("py-spy"):
        raise SystemExit("--profile needs py-spy (pip install py-spy) on PATH")
    results = []
    for follow in args.follow.split(","):
        with local_service(OMP_NUM_THREADS="1", TORCH_THREADS="1") as stack:
            results.append(measure(stack, follow, args.jobs, profile_dir))
    names = sorted({k for r in results for k in r["calls"]}, key=lambda k: -max(r["calls"].get(k, 0) for r in results))
    header = "| per job | " + " | ".join(r["follow"] for r in results) + " |"
    print(
        f"{args.jobs} sequential default one-digit jobs (digit=7, n=1), each downloaded; the manifest read per job "
        "is counted out"
    )
    print(header)
    print("| --- |" + " ---: |" * len(results))

    def row(label: str, values: list[str]) -> None:
        print(f"| {label} | " + " | ".join(values) + " |")

    row("end to end, median (ms)", [f"{1000 * r['e2e_p50']:.1f}" for r in results])
    row("model time, median (ms)", [f"{1000 * r['model_p50']:.1f}" for r in results])
    row(
        "**service overhead**, median / p90 (ms)",
        [f"{1000 * r['overhead_p50']:.1f} / {1000 * r['overhead_p90']:.1f}" for r in results],
    )
    for proc in ("API", "worker", "Redis"):
        row(f"CPU {proc} (ms)", [f"{1000 * r['cpu'][proc]:.2f}" for r in results])
    # the loop's own manifest read per job: one HMGET of the record (the file comes from the store)
    row("**Redis commands**", [f"{sum(r['calls'].values()) / r['jobs'] - 1:.2f}" for r in results])
    for name in names:
        values = []
        for r in results:
            value = r["calls"].get(name, 0) / r["jobs"] - (1 if name == "hmget" else 0)
            values.append(f"{value:.2f}")
        row(f"- {name}", values)
    if profile_dir is not None:
        for path in sorted(profile_dir.glob("*.txt")):
            print(f"\n{path.stem}: the functions with the most own samples (own %, total %)")
            for frame, own, total in top_frames(path):
                print(f"  {own:5.1f}  {total:5.1f}  {frame}")


if __name__ == "__main__":
    main()
