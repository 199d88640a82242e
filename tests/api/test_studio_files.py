"""The studio's files and the offline docs, through the app (no browser): what the page may load, and from where."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from core.operations import OPERATIONS
from core.settings import Settings

STUDIO = Path(__file__).resolve().parents[2] / "app" / "studio"


@pytest.fixture
def client(redis_server, tmp_path) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_server.url, queue_name=f"studio-{uuid.uuid4().hex[:8]}", results_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_studio_is_at_the_root_with_its_files(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # the page may load nothing from another host: its own policy says so
    assert "default-src 'self'" in r.text and "connect-src 'self'" in r.text
    for name, media in (("studio.js", "javascript"), ("studio.css", "text/css")):
        asset = client.get(f"/studio/{name}")
        assert asset.status_code == 200 and media in asset.headers["content-type"]
    assert '<script type="module" src="/studio/studio.js">' in r.text  # an ES module: deferred, strict
    config = client.get("/studio/config.json").json()
    assert config["api_key_required"] is False
    assert [op["name"] for op in config["operations"]] == list(OPERATIONS)
    inpaint = next(op for op in config["operations"] if op["name"] == "if_inpaint")
    assert [u["name"] for u in inpaint["uploads"]] == ["image", "mask"] and inpaint["transport"] == "form"
    # neither the page nor its files are in the API schema
    assert not {"/", "/studio/config.json"} & set(client.get("/openapi.json").json()["paths"])


def test_every_module_is_served_as_javascript_and_every_import_resolves(client: TestClient) -> None:
    """A browser refuses a module script served with another MIME type, and a missing import breaks the page."""
    modules = sorted(path.name for path in STUDIO.glob("*.js"))
    assert "studio.js" in modules and len(modules) > 1
    for name in modules:
        asset = client.get(f"/studio/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript"), name
        for target in re.findall(r'^import .*? from "(.+?)";$', asset.text, flags=re.M):
            assert target.startswith("./") and (STUDIO / target[2:]).is_file(), f"{name} imports {target}"


def test_studio_files_name_no_other_host() -> None:
    for path in STUDIO.iterdir():
        urls = re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", path.read_text())
        assert urls == [], f"{path.name} refers to {urls}"


def test_docs_pages_load_only_shipped_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(ref.startswith("/docs-assets/") for ref in refs), refs
        assert "fonts.googleapis" not in html
        for ref in refs:
            assert client.get(ref).status_code == 200, ref
    assert "validatorUrl" in client.get("/docs").text
    assert "cdn.redoc.ly" not in client.get("/docs-assets/redoc.standalone.js").text


def test_an_api_key_is_announced_but_the_page_needs_none(redis_server, tmp_path) -> None:
    settings = Settings(redis_url=redis_server.url, results_dir=tmp_path, api_key="k")
    with TestClient(create_app(settings)) as c:
        assert c.get("/").status_code == 200 and c.get("/studio/studio.js").status_code == 200
        assert c.get("/studio/config.json").json()["api_key_required"] is True
        assert c.get("/docs").status_code == 200
        assert c.get(f"/jobs/{'0' * 32}/events").status_code == 401
        assert c.get(f"/jobs/{'0' * 32}/events", headers={"X-API-Key": "k"}).status_code == 404
