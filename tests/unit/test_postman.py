"""The committed Postman collection is what postman/build_collection.py writes, and covers every endpoint."""

from __future__ import annotations

import json
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
        covered.add((req["method"], path.replace("{{jobId}}", "{job_id}").replace("{{previewName}}", "{name}")))
        for field in req.get("body", {}).get("formdata", []):
            if field["type"] == "file":
                assert (ROOT / "postman" / field["src"]).is_file()
        assert item["event"][0]["script"]["exec"], item["name"]
    spec = create_app().openapi()
    wanted = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    # cancel and file downloads by name are covered by the test suite, not the collection
    wanted -= {("POST", "/jobs/{job_id}/cancel"), ("GET", "/jobs/{job_id}/files/{name}")}
    assert wanted <= covered, wanted - covered
