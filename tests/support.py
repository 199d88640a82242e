"""Test support: a real redis-server, real worker processes and a real uvicorn API.

Nothing is mocked: `Stack` starts the same commands that `make run` starts, with settings in
environment variables, on free loopback ports and a temporary results directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis as redis_client

from core.lifecycle import Lifecycle, service_queue

ROOT = Path(__file__).resolve().parent.parent


def load_script(relative: str) -> types.ModuleType:
    """Import a script of the repository that is not in a package (``bench/bench_if.py``) as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A throw-away redis-server on a free port (append-only persistence optional)."""

    def __init__(self, *, appendonly: bool = False, port: int | None = None, data_dir: Path | None = None) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server is not installed: run `make setup` (installs Debian's redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            return _pings(client)

        wait_until(up, 10, what="redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet, whatever the reason
        return False


class Stack:
    """API + workers against one Redis, with their own queue and results directory."""

    def __init__(self, redis_url: str, env: dict[str, str], tmp: Path) -> None:
        self.redis_url = redis_url
        self.tmp = tmp
        self.port = free_port()
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "QUEUE_NAME": f"test-{uuid.uuid4().hex[:8]}",
            "RESULTS_DIR": str(tmp / "results"),
            "PORT": str(self.port),
            "OMP_NUM_THREADS": "1",
            "WORKER_HEARTBEAT_S": "1",
            "WORKER_DEAD_AFTER_S": "3",
            "WORKER_MAINTENANCE_S": "1",
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    # -- processes ----------------------------------------------------------------------------
    def _log(self, name: str):
        return open(self.tmp / f"{name}.log", "ab")

    def start_api(self) -> Stack:
        self.api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log("api"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._healthy, 30, what="the API")
        return self

    def _healthy(self) -> bool:
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, *, wait: bool = True, **extra_env: str) -> subprocess.Popen:
        name = f"w{len(self.workers)}-{uuid.uuid4().hex[:6]}"
        env = {**self.env, **extra_env}
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "--name", name],
            cwd=ROOT,
            env=env,
            stdout=self._log(name),
            stderr=subprocess.STDOUT,
        )
        proc.worker_name = name  # type: ignore[attr-defined]
        self.workers.append(proc)
        if wait:
            wait_until(lambda: self._worker_listed(name, proc), 120, what=f"worker {name}")
        return proc

    def _worker_listed(self, name: str, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {proc.returncode}: see {self.tmp / (name + '.log')}")
        body = self.client.get("/readyz").json()
        return any(w["name"] == name for w in body.get("workers", []))

    def kill_worker(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.api]:
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.client.close()

    # -- HTTP helpers -----------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/jobs/{job_id}")
        r.raise_for_status()
        return r.json()

    def wait_terminal(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        def done():
            body = self.job(job_id)
            return body if body["status"] in ("succeeded", "failed", "canceled") else None

        return wait_until(done, timeout, interval=0.05, what=f"job {job_id} to finish")

    def wait_status(self, job_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
        return wait_until(
            lambda: (b := self.job(job_id))["status"] == status and b, timeout, what=f"job {job_id} to be {status}"
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log"))


def enqueue_raw(stack: Stack, func: str) -> str:
    """Enqueue a test job function the way the API enqueues an operation (hex id, the record, one retry)."""
    job_id = uuid.uuid4().hex
    redis = redis_client.Redis.from_url(stack.redis_url)
    lifecycle = Lifecycle(redis, service_queue(stack.env["QUEUE_NAME"], redis), result_ttl_s=3600, tombstone_ttl_s=3600)
    lifecycle.submit(job_id, kind=func.rpartition(".")[2], func=func, params={"seed": 1}, retries=1, timeout_s=60)
    return job_id
