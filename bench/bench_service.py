"""Service benchmarks on this machine: end-to-end latency of a 10-digit /mnist/sample (submit to PNG
downloaded), split into model time (the worker's own measure, from the manifest) and service
overhead, and the enqueue throughput of the API (submits/s with no worker draining the queue).

A client waits for its job by polling every 5 ms (``--follow poll``) or in the submission itself with
``Prefer: wait`` (``--follow wait``); ``--s3`` keeps the results on a local S3 server (SeaweedFS, started here)
instead of the results folder.

    .venv/bin/python bench/bench_service.py [--repeats 10] [--follow poll,wait] [--s3]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import statistics
import threading
import time

import httpx
from harness import local_service, percentile, table


def e2e(stack, repeats: int, params: dict, follow: str = "poll") -> list[tuple[str, str]]:
    http = stack.client
    totals, models = [], []
    headers = {"Prefer": "wait=60"} if follow == "wait" else {}
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        body = http.post("/mnist/sample", params=params | {"seed": i}, headers=headers).json()
        while body["status"] not in ("succeeded", "failed"):
            time.sleep(0.005)
            body = http.get(f"/jobs/{body['id']}").json()
        assert body["status"] == "succeeded", body
        png = http.get(body["result_url"])
        total = time.perf_counter() - t0
        assert png.status_code == 200
        manifest = http.get(body["results"]["manifest.json"]).json()
        if i:  # the first run warms up caches
            totals.append(total)
            models.append(manifest["timings"]["model_s"])
    overhead = [t - m for t, m in zip(totals, models, strict=True)]
    return [
        ("request", " ".join(f"{k}={v}" for k, v in params.items()) + f", {follow}"),
        ("end to end, median (s)", f"{statistics.median(totals):.3f}"),
        ("model time, median (s)", f"{statistics.median(models):.3f}"),
        ("service overhead, median (s)", f"{statistics.median(overhead):.3f}"),
        ("service overhead, p90 (s)", f"{percentile(overhead, 90):.3f}"),
        ("repeats", str(repeats)),
    ]


def enqueue_throughput(base_url: str, total: int, clients: int) -> float:
    local = threading.local()

    def submit(_: int) -> int:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=base_url, timeout=30)  # keep-alive, one per client thread
        return local.http.post("/mnist/sample", params={"digit": 1, "n": 1}).status_code

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(submit, range(total)))
    elapsed = time.perf_counter() - t0
    assert codes.count(202) == total, set(codes)
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--submits", type=int, default=500)
    parser.add_argument("--follow", default="poll,wait", help="poll, wait, or both (comma-separated)")
    parser.add_argument(
        "--s3", action="store_true", help="results on a local S3 server (SeaweedFS) instead of a folder"
    )
    parser.add_argument("--no-old", action="store_true", help="skip the old 50-step default request")
    args = parser.parse_args()
    rows = []
    with contextlib.ExitStack() as stack_of:
        env: dict[str, str] = {}
        if args.s3:
            from tests.support import SeaweedServer

            s3 = SeaweedServer().start()
            stack_of.callback(s3.cleanup)
            env = s3.env("bench")
            rows.append(("results", f"S3 (SeaweedFS on loopback, started in {s3.startup_s:.1f} s)"))
        else:
            rows.append(("results", "folder (RESULTS_DIR)"))
        with local_service(workers=1, **env) as stack:
            for follow in args.follow.split(","):
                if not args.no_old:  # the default request before issue 13, named explicitly
                    old = {"digit": 7, "n": 10, "steps": 50, "guidance": 5.0, "sampler": "euler"}
                    rows += e2e(stack, args.repeats, old, follow)
                rows += e2e(stack, args.repeats, {"digit": 7, "n": 10}, follow)
    with local_service(workers=0) as stack:
        base = str(stack.client.base_url)
        enqueue_throughput(base, 50, 4)  # warm-up
        for clients in (1, 8):
            rate = enqueue_throughput(base, args.submits, clients)
            rows.append((f"enqueue throughput, {clients} client(s) (submits/s)", f"{rate:.0f}"))
    print(table(rows))


if __name__ == "__main__":
    main()
