"""Load test: N concurrent clients for a fixed time against /mnist/sample.

Each client loops: submit, poll until the job is terminal, download the PNG. After the time is up no
new job is submitted and the outstanding ones are awaited (bounded). Reports throughput, p50/p99
end-to-end latency, errors, and lost jobs (accepted but never seen terminal), which must be zero.
Only loopback addresses are targeted; the run stops by itself.

    .venv/bin/python bench/load.py --clients 8 --seconds 60            # a fresh local stack
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 ...     # a running service (loopback)
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
from harness import local_service, percentile, table

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    finished: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client_loop(base_url: str, stop_at: float, drain_until: float, params: dict, tally: Tally, seed0: int) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        i = 0
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            i += 1
            try:
                r = http.post("/mnist/sample", params=params | {"seed": seed0 + i})
                if r.status_code != 202:
                    with tally.lock:
                        tally.errors.append(f"submit {r.status_code}")
                    time.sleep(0.2)
                    continue
                job_id = r.json()["id"]
                with tally.lock:
                    tally.accepted.add(job_id)
                status = r.json()["status"]
                while status not in TERMINAL and time.monotonic() < drain_until:
                    time.sleep(0.02)
                    status = http.get(f"/jobs/{job_id}").json()["status"]
                if status not in TERMINAL:
                    continue  # counted as lost
                ok = status == "succeeded" and http.get(f"/jobs/{job_id}/result").status_code == 200
                with tally.lock:
                    tally.finished[job_id] = status
                    if ok:
                        tally.latencies.append(time.monotonic() - t0)
                    else:
                        tally.errors.append(f"job {status}")
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.errors.append(type(exc).__name__)


def run(base_url: str, clients: int, seconds: float, params: dict, drain_s: float) -> list[tuple[str, str]]:
    host = urlparse(base_url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit("load tests target loopback addresses only")
    tally = Tally()
    start = time.monotonic()
    stop_at, drain_until = start + seconds, start + seconds + drain_s
    threads = [
        threading.Thread(target=client_loop, args=(base_url, stop_at, drain_until, params, tally, 1000 * k))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    lat = sorted(tally.latencies)
    lost = len(tally.accepted - set(tally.finished))
    return [
        ("clients", str(clients)),
        ("duration (s)", f"{seconds:.0f} (+ drain, {elapsed:.1f} in all)"),
        ("request", " ".join(f"{k}={v}" for k, v in params.items())),
        ("jobs accepted", str(len(tally.accepted))),
        ("jobs succeeded", str(sum(1 for s in tally.finished.values() if s == "succeeded"))),
        ("throughput (jobs/s, over the whole run incl. drain)", f"{len(lat) / elapsed:.2f}"),
        ("latency p50 (s)", f"{percentile(lat, 50):.3f}"),
        ("latency p99 (s)", f"{percentile(lat, 99):.3f}"),
        ("errors", str(len(tally.errors)) + (f" ({', '.join(sorted(set(tally.errors)))})" if tally.errors else "")),
        ("lost jobs", str(lost)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service on loopback (default: start a fresh local stack)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="workers of the local stack")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker of the local stack")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--digit", type=int, default=7)
    parser.add_argument("--drain", type=float, default=120, help="seconds to await outstanding jobs")
    args = parser.parse_args()
    params = {"digit": args.digit, "n": args.n, "steps": args.steps}
    if args.url:
        rows = run(args.url, args.clients, args.seconds, params, args.drain)
    else:
        with local_service(workers=args.workers, OMP_NUM_THREADS=str(args.threads)) as stack:
            rows = run(str(stack.client.base_url), args.clients, args.seconds, params, args.drain)
        rows.insert(0, ("workers x torch threads", f"{args.workers} x {args.threads}"))
    print(table(rows))
    lost = int(dict(rows)["lost jobs"])
    raise SystemExit(1 if lost else 0)


if __name__ == "__main__":
    main()
