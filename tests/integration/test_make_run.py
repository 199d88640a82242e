"""`make run` (scripts/run.sh) starts Redis, the API and a worker, says "ready" once /readyz answers 200,
serves, and stops cleanly on Ctrl-C; on a busy port it fails at once and says so."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import redis

from tests.support import ROOT, free_port, wait_until


@pytest.mark.parametrize("tiny_if", [False, True], ids=["mnist", "tiny-if"])
def test_run_script_starts_everything_and_stops_on_ctrl_c(mnist_checkpoints, tmp_path, tiny_if: bool) -> None:
    redis_port, port = free_port(), free_port()
    env = {
        **os.environ,
        **mnist_checkpoints,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "PORT": str(port),
        "RESULTS_DIR": str(tmp_path / "results"),
        "OMP_NUM_THREADS": "1",
        "VENV": sys.prefix,  # the interpreter running the tests (run.sh defaults to .venv)
    }
    if tiny_if:  # `TINY_IF=1 make run`: every endpoint on the tiny random-weight IF pipelines
        env |= {"TINY_IF": "1", "TINY_IF_DIR": str(tmp_path / "tiny-if")}
    expected = ["mnist_sample"]
    if tiny_if:
        expected = sorted(
            [*expected, "if_anagram", "if_denoise", "if_hybrid", "if_inpaint", "if_sample", "if_sdedit", "if_upscale"]
        )
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen(
            ["bash", "scripts/run.sh"], cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    ready_line = f"run: ready: http://127.0.0.1:{port}"
    try:

        def ready():
            said_ready = ready_line in (tmp_path / "run.log").read_text()  # read before asking /readyz
            try:
                answer = client.get("/readyz")
                status, operations = answer.status_code, answer.json().get("operations")
            except (httpx.HTTPError, ValueError):
                status, operations = None, None
            if said_ready:  # it said so only once /readyz answered 200, which stays so
                assert status == 200, (status, (tmp_path / "run.log").read_text())
            return said_ready and operations == expected

        wait_until(ready, 90, interval=0.2, what="make run to say it is ready")
        text = (tmp_path / "run.log").read_text()
        # it said what it waited for first (the API, and the worker unless it was up before the API)
        assert text.index("run: waiting for the API to answer") < text.index(ready_line), text
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
    # What still runs in the process group. An exited process waiting to be reaped (state Z) is not left running:
    # the API's multiprocessing resource tracker exits on EOF once the API has exited, so init reaps it, and
    # this VM's init does that lazily (on CI one such zombie outlived the 0.5 s above).
    listing = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    leftovers = [
        pid
        for pid, pgid, stat in (line.split() for line in listing.splitlines())
        if pgid == str(proc.pid) and not stat.startswith("Z")
    ]
    log = (tmp_path / "run.log").read_text()
    assert leftovers == [], log
    assert "Traceback" not in log and "Error" not in log, log  # an orderly, quiet shutdown
    assert log.rstrip().endswith("run: stopped"), log
    try:
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
        raise AssertionError("redis-server still running after Ctrl-C")
    except redis.ConnectionError:
        pass


def test_run_script_fails_at_once_on_a_busy_port(tmp_path) -> None:
    redis_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PORT": str(port),
            "RESULTS_DIR": str(tmp_path / "results"),
            "VENV": sys.prefix,
        }
        run = subprocess.run(["bash", "scripts/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run
    assert run.stderr.strip() == (
        f"run: cannot start the API: port {port} on 127.0.0.1 is not free (Address already in use); "
        "stop what uses it, or choose another port: PORT=8080 make run"
    )
    assert "ready" not in run.stdout
    # nothing was started: no Redis on its port, no results folder
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
    assert not (tmp_path / "results").exists()
