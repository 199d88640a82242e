"""The committed Postman collection is what postman/build_collection.py writes, and covers every endpoint;
`make postman` (scripts/postman.sh) removes its work folder however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.main import create_app
from tests.support import load_script

ROOT = Path(__file__).resolve().parents[2]


def _builder():
    return load_script("postman/build_collection.py")


def test_committed_json_is_up_to_date() -> None:
    for name, text in _builder().render().items():
        assert (ROOT / "postman" / name).read_text() == text, f"run: python postman/build_collection.py ({name})"


def _requests(items):
    for item in items:
        if "item" in item:
            yield from _requests(item["item"])
        else:
            yield item


def test_collection_covers_every_endpoint_and_its_files_exist() -> None:
    collection = json.loads((ROOT / "postman" / "collection.json").read_text())
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    requests = list(_requests(collection["item"]))
    covered = set()
    for item in requests:
        req = item["request"]
        path = "/" + "/".join(req["url"]["path"])
        path = path.replace("{{jobId}}", "{job_id}").replace("{{waitJobId}}", "{job_id}")
        covered.add((req["method"], path.replace("{{previewName}}", "{name}")))
        for field in req.get("body", {}).get("formdata", []):
            if field["type"] == "file":
                assert (ROOT / "postman" / field["src"]).is_file()
        assert item["event"][0]["script"]["exec"], item["name"]
    spec = create_app().openapi()
    wanted = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    # cancel and file downloads by name are covered by the test suite, not the collection
    wanted -= {("POST", "/jobs/{job_id}/cancel"), ("GET", "/jobs/{job_id}/files/{name}")}
    assert wanted <= covered, wanted - covered


def _fake_venv(folder: Path, tiny_build: str) -> Path:
    """A VENV whose python runs ``tiny_build`` (shell) for the tiny-pipeline step and is the real one otherwise."""
    bin_dir = folder / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(
        f'#!/bin/sh\ncase "$*" in *models.diffusion.tiny*) {tiny_build} ;; esac\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    return bin_dir.parent


def _postman(tmp_path: Path, tiny_build: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "VENV": str(_fake_venv(tmp_path, tiny_build))}
    (tmp_path / "tmp").mkdir()
    return subprocess.Popen(
        ["bash", "scripts/postman.sh"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_make_postman_leaves_no_folder_when_it_fails(tmp_path) -> None:
    run = _postman(tmp_path, "echo 'tiny: no room left' >&2; exit 3")
    _, err = run.communicate(timeout=30)
    assert run.returncode == 3 and "tiny: no room left" in err
    assert list((tmp_path / "tmp").iterdir()) == []


def test_make_postman_leaves_no_folder_when_interrupted(tmp_path) -> None:
    building = tmp_path / "building"
    run = _postman(tmp_path, f"touch {building}; exec sleep 30")
    deadline = time.monotonic() + 20
    while not building.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((tmp_path / "tmp").glob("postman-run.*")), "the run never got to building the pipelines"
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C, while it builds the tiny pipelines
    run.communicate(timeout=30)
    assert run.returncode == 130
    assert list((tmp_path / "tmp").iterdir()) == []
