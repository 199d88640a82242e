"""`make run` (scripts/run.sh) starts Redis, the API and a worker, serves, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import redis

from tests.support import ROOT, free_port, wait_until


def test_run_script_starts_everything_and_stops_on_ctrl_c(mnist_checkpoints, tmp_path) -> None:
    redis_port, port = free_port(), free_port()
    env = {**os.environ, **mnist_checkpoints, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PORT": str(port),
           "RESULTS_DIR": str(tmp_path / "results"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=open(tmp_path / "run.log", "wb"), stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        def ready():
            try:
                return client.get("/readyz").json().get("operations") == ["mnist_sample"]
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(ready, 90, interval=0.3, what="make run to be ready")
        job = client.post("/mnist/sample", params={"digit": 0, "n": 2, "steps": 3}).json()
        wait_until(lambda: client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded", 30, what="the job")
        assert client.get(f"/jobs/{job['id']}/result").headers["content-type"] == "image/png"
        # Redis was started by the script with append-only persistence
        assert redis.Redis(port=redis_port).config_get("appendonly")["appendonly"] == "yes"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        proc.wait(30)
        client.close()
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], (tmp_path / "run.log").read_text()
    try:
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
        raise AssertionError("redis-server still running after Ctrl-C")
    except redis.ConnectionError:
        pass
