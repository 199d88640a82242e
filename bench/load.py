"""Load test: N concurrent clients for a fixed time against /mnist/sample (or a tiny-IF mix).

Each client loops: submit, poll its job every 20 ms until it is terminal (or follow its event stream:
``--follow events``; or submit with ``Prefer: wait=60`` and get the final body in the answer: ``--follow wait``),
download the PNG. ``--follow poll,wait`` runs each way on a fresh stack, one row each; ``--anchor`` adds a row
for the bare FastAPI + RQ no-op stack (``bench/bare_stack.py``) under the same clients, polling, in the same
run. After the time is up no
new job is submitted and the outstanding ones are awaited (bounded). Reports throughput, p50/p99
end-to-end latency, errors, and lost jobs (accepted but never seen terminal), which must be zero.
Only loopback addresses are targeted; the run stops by itself.

    .venv/bin/python bench/load.py --clients 8 --seconds 60                  # a fresh local stack
    .venv/bin/python bench/load.py --clients 16 --n 1 --steps 5 --batching off,on   # one table, both modes
    .venv/bin/python bench/load.py --mix if --batching off,on                 # tiny-IF operations (and MNIST)
    .venv/bin/python bench/load.py --clients 16 --n 1 --follow poll,events,wait --anchor  # the overhead table
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 ...           # a running service (loopback)

With ``--batching off,on`` each mode gets a fresh stack (BATCHING=off: one job at a time; on: up to
MAX_INFLIGHT_JOBS jobs share each network forward) and the table has one row per mode.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from harness import ROOT, local_service, percentile

from tests.support import RedisServer, free_port, wait_until

TERMINAL = {"succeeded", "failed", "canceled"}
PHOTO = (ROOT / "postman" / "photo.png").read_bytes()
MASK = (ROOT / "postman" / "mask.png").read_bytes()

#: One request: (path, query params, form fields, files). ``seed`` is added per request.
Submit = tuple[str, dict[str, Any], dict[str, Any], dict[str, tuple[str, bytes, str]]]


def _mnist(digit: int, n: int, steps: int | None) -> dict[str, Any]:
    """The query of one MNIST request; without ``steps`` the service's default solver."""
    return {"digit": digit, "n": n} | ({} if steps is None else {"steps": steps})


def mnist_requests(n: int, steps: int | None, digit: int) -> Callable[[int], Submit]:
    return lambda i: ("/mnist/sample", _mnist(digit, n, steps), {}, {})


def if_mix(n: int, steps: int | None, digit: int) -> Callable[[int], Submit]:
    """Every tiny-IF operation in turn (sample, SDEdit at two noise levels, inpaint, 2- and 4-view anagrams,
    hybrid, one-step and iterative denoise) and an MNIST request between them."""
    photo = {"image": ("photo.png", PHOTO, "image/png")}
    mix: list[Submit] = [
        ("/sample", {}, {"prompt": "a red ball"}, {}),
        ("/sdedit", {}, {"prompt": "a drawing", "i_start": 10}, photo),
        ("/mnist/sample", _mnist(digit, n, steps), {}, {}),
        ("/inpaint", {}, {"prompt": "a balloon"}, photo | {"mask": ("mask.png", MASK, "image/png")}),
        ("/anagram", {}, {"prompts": ["a campfire", "an old man"]}, {}),
        ("/sdedit", {}, {"prompt": "a photo", "i_start": 25}, photo),
        ("/anagram", {}, {"prompts": ["a", "b", "c", "d"], "views": ["identity", "rot90", "rot180", "rot270"]}, {}),
        ("/hybrid", {}, {"prompt_low": "a skull", "prompt_high": "waterfalls"}, {}),
        ("/denoise", {}, {"t": 500, "method": "one_step"}, photo),
        ("/denoise", {}, {"t": 690, "method": "iterative"}, photo),
    ]
    return lambda i: mix[i % len(mix)]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    finished: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _follow_events(http: httpx.Client, job_id: str, until: float) -> str:
    """Read the job's event stream until its ``done`` event; its status (or "running" when the stream ended
    early or ran past ``until``: the caller then polls)."""
    event = ""
    with http.stream("GET", f"/jobs/{job_id}/events", timeout=max(until - time.monotonic(), 1.0)) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "done":
                return str(json.loads(line[5:])["status"])
    return "running"


def client_loop(
    base_url: str,
    stop_at: float,
    drain_until: float,
    make: Callable[[int], Submit],
    tally: Tally,
    seed0: int,
    offset: int,
    follow: str = "poll",
) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for i in itertools.count(offset):
            if time.monotonic() >= stop_at:
                break
            t0 = time.monotonic()
            path, params, data, files = make(i)
            seed = seed0 + i
            headers = {"Prefer": "wait=60"} if follow == "wait" else {}
            try:
                if files or data:
                    r = http.post(path, params=params, data=data | {"seed": seed}, files=files or None, headers=headers)
                else:
                    r = http.post(path, params=params | {"seed": seed}, headers=headers)
                if r.status_code not in (200, 202):
                    with tally.lock:
                        tally.errors.append(f"submit {r.status_code}")
                    time.sleep(0.2)
                    continue
                job_id = r.json()["id"]
                with tally.lock:
                    tally.accepted.add(job_id)
                status = r.json()["status"]
                if follow == "events" and status not in TERMINAL:
                    status = _follow_events(http, job_id, drain_until)
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


def run(
    base_url: str,
    clients: int,
    seconds: float,
    make: Callable[[int], Submit],
    drain_s: float,
    follow: str = "poll",
) -> dict[str, str]:
    host = urlparse(base_url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit("load tests target loopback addresses only")
    tally = Tally()
    start = time.monotonic()
    stop_at, drain_until = start + seconds, start + seconds + drain_s
    threads = [
        threading.Thread(target=client_loop, args=(base_url, stop_at, drain_until, make, tally, 1000 * k, k, follow))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    lat = sorted(tally.latencies)
    lost = len(tally.accepted - set(tally.finished))
    return {
        "jobs": str(len(tally.accepted)),
        "succeeded": str(sum(1 for s in tally.finished.values() if s == "succeeded")),
        "jobs/s": f"{len(lat) / elapsed:.2f}",
        "p50 (s)": f"{percentile(lat, 50):.3f}",
        "p99 (s)": f"{percentile(lat, 99):.3f}",
        "errors": str(len(tally.errors)) + (f" ({', '.join(sorted(set(tally.errors)))})" if tally.errors else ""),
        "lost": str(lost),
        "wall (s)": f"{elapsed:.1f}",
    }


@contextlib.contextmanager
def bare_stack() -> Iterator[str]:
    """The anchor (``bench/bare_stack.py``): its own redis-server, its uvicorn app and one RQ SimpleWorker."""
    tmp = Path(tempfile.mkdtemp(prefix="bare-"))
    server = RedisServer(data_dir=tmp / "redis").start()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "bench" / "bare_stack.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, role, "--redis", server.url, "--port", str(port)], env=env, cwd=ROOT / "bench"
        )
        for role in ("api", "worker")
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), 30, what="the bare stack")
        yield url
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/jobs/x/result", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def tiny_if(folder: Path) -> dict[str, str]:
    """Build the tiny IF pipelines (the project's builder) and return the worker settings that load them."""
    subprocess.run(
        [sys.executable, "-m", "models.diffusion.tiny", str(folder / "s1"), "--stage2", str(folder / "s2")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return {"IF_ENABLED": "true", "IF_STAGE1_MODEL": str(folder / "s1"), "IF_STAGE2_MODEL": str(folder / "s2")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service on loopback (default: start a fresh local stack)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="workers of the local stack")
    parser.add_argument(
        "--threads", default="2", help="torch threads per worker of the local stack: 2, or 1,2 (a row each)"
    )
    parser.add_argument("--batching", default="on", help="on, off, or off,on (one row each, fresh stacks)")
    parser.add_argument("--mix", choices=["mnist", "if"], default="mnist", help="if: every tiny-IF operation + MNIST")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--steps", type=int, help="MNIST solver steps (default: the service's default request)")
    parser.add_argument("--digit", type=int, default=7)
    parser.add_argument("--drain", type=float, default=120, help="seconds to await outstanding jobs")
    parser.add_argument(
        "--follow",
        default="poll",
        help="how a client waits for its job: poll (GET /jobs/{id} every 20 ms), events (GET /jobs/{id}/events), "
        "wait (Prefer: wait=60 on the submission), or several, comma-separated (a fresh stack and a row each)",
    )
    parser.add_argument(
        "--anchor", action="store_true", help="add a row for the bare FastAPI + RQ no-op stack (bench/bare_stack.py)"
    )
    args = parser.parse_args()
    follows = args.follow.split(",")
    if not set(follows) <= {"poll", "events", "wait"}:
        raise SystemExit(f"--follow: poll, events or wait, not {args.follow!r}")
    make = (if_mix if args.mix == "if" else mnist_requests)(args.n, args.steps, args.digit)
    rows: list[dict[str, str]] = []
    if args.anchor:
        with bare_stack() as url:
            result = run(url, args.clients, args.seconds, make, args.drain, "poll")
        rows.append(
            {"stack": "bare FastAPI + RQ no-op", "follow": "poll", "batching": "-", "workers x threads": "1"} | result
        )
    if args.url:
        for follow in follows:
            result = run(args.url, args.clients, args.seconds, make, args.drain, follow)
            rows.append({"stack": args.url, "follow": follow} | result)
    else:
        env: dict[str, str] = {}
        if args.mix == "if":
            env |= tiny_if(Path(tempfile.mkdtemp(prefix="load-tiny-if-")))
        for follow in follows:
            for threads in args.threads.split(","):
                for mode in args.batching.split(","):
                    with local_service(
                        workers=args.workers, BATCHING=mode, OMP_NUM_THREADS=threads, TORCH_THREADS=threads, **env
                    ) as stack:
                        result = run(str(stack.client.base_url), args.clients, args.seconds, make, args.drain, follow)
                    rows.append(
                        {
                            "stack": "service",
                            "follow": follow,
                            "batching": mode,
                            "workers x threads": f"{args.workers} x {threads}",
                        }
                        | result
                    )
    if args.anchor:
        anchor = float(rows[0]["jobs/s"])
        for row in rows:
            row["vs bare"] = f"{float(row['jobs/s']) / max(anchor, 1e-9):.2f}x"
    request = f"mix={args.mix} n={args.n} steps={args.steps or 'default'}" + (
        " digit=" + str(args.digit) if args.mix == "mnist" else ""
    )
    print(f"{args.clients} clients for {args.seconds:.0f} s, {request}")
    print(table_rows(rows))
    service = [r for r in rows if r.get("stack") == "service"]
    if service and {r["batching"] for r in service} == {"off", "on"}:
        best = {
            m: max((r for r in service if r["batching"] == m), key=lambda r: float(r["jobs/s"])) for m in ("off", "on")
        }
        speedup = float(best["on"]["jobs/s"]) / max(float(best["off"]["jobs/s"]), 1e-9)
        print(
            f"jobs/s, best on ({best['on']['workers x threads']}) / best off ({best['off']['workers x threads']}): "
            f"{speedup:.2f}x"
        )
    raise SystemExit(1 if any(int(r["lost"]) for r in rows) else 0)


def table_rows(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
