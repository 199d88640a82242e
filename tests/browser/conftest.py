"""The studio in a real Chromium (Debian's ``chromium``, driven by Playwright) against a live service: a real
Redis, a worker with the shipped MNIST checkpoints and the tiny IF pipelines, and uvicorn.

Every page records the requests it makes to other hosts, console errors, uncaught exceptions and unhandled
promise rejections; ``Page.assert_clean`` fails on any of them. The only console lines a test may excuse are
Chromium's own notes about a failed resource load that the test itself provokes (a 422 it wants, a refused
connection while it has stopped the API), matched by `expected`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.pages import Page
from tests.support import Stack, wait_until


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: run `make setup` (installs Debian's chromium)", pytrace=False)
    return path


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """Chromium for the browser tests. Package scope: Playwright's sync API keeps an event loop running in the
    main thread while it is open, which would break every later test that calls ``asyncio.run``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="package")
def service(redis_server, tiny_if, tmp_path_factory) -> Iterator[Stack]:
    """The API and one worker on the shipped MNIST checkpoints (the settings' defaults) and the tiny IF."""
    stack = Stack(redis_server.url, {**tiny_if, "PREVIEW_EVERY": "2"}, tmp_path_factory.mktemp("studio"))
    stack.start_api()
    stack.start_worker()
    wait_until(lambda: "if_inpaint" in stack.client.get("/readyz").json()["operations"], 60, what="IF ready")
    yield stack
    stack.stop()


@pytest.fixture
def page(browser, service: Stack) -> Iterator[Page]:
    p = Page(browser, str(service.client.base_url), viewport={"width": 1280, "height": 900})
    yield p
    p.close(service)
