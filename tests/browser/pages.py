"""A Chromium page on the studio that records what a test must not see (see ``Page``), and small helpers."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from tests.support import Stack

TIMEOUT_MS = 120_000

# Chromium logs `unhandledrejection` only as a console message; make it a console error with a fixed prefix.
REJECTIONS = """window.addEventListener("unhandledrejection", (event) => {
  console.error("unhandledrejection: " + (event.reason && (event.reason.stack || event.reason.message) || event.reason));
});"""


class Page:
    """A fresh browser context and page that records requests to other hosts, console errors, uncaught
    exceptions and unhandled rejections, and the jobs it submitted (canceled at close if still running)."""

    def __init__(self, browser, base_url: str, **context) -> None:
        self.base = base_url.rstrip("/")
        self.context = browser.new_context(accept_downloads=True, **context)
        self.context.add_init_script(REJECTIONS)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.jobs: list[str] = []
        origin = urlsplit(self.base).netloc

        def request(r) -> None:
            if urlsplit(r.url).scheme not in ("blob", "data") and urlsplit(r.url).netloc != origin:
                self.foreign.append(r.url)

        def response(r) -> None:
            if r.request.method == "POST" and r.status in (200, 202) and not r.url.endswith("/cancel"):
                with contextlib.suppress(Exception):  # not a job body
                    self.jobs.append(r.json()["id"])

        self.page.on("request", request)
        self.page.on("response", response)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def open(self, path: str = "/") -> object:
        self.page.goto(self.base + path)
        if path == "/" or path.startswith("/#"):
            self.wait_ready()
        return self.page

    def wait_ready(self) -> None:
        self.page.wait_for_selector("body[data-ready=true]", state="attached")

    def reload(self) -> None:
        self.page.reload()
        self.wait_ready()

    def tab(self, label: str) -> object:
        self.page.get_by_role("tab", name=label).click()
        return self.panel()

    def panel(self) -> object:
        return self.page.locator("section[role=tabpanel]:not([hidden])")

    def card(self, job_id: str | None = None) -> object:
        """The history card of a job (the newest one without an id)."""
        cards = self.page.locator("#history-list article.job")
        return (
            cards.first if job_id is None else self.page.locator(f"#history-list article.job[data-job-id='{job_id}']")
        )

    def run(self, panel) -> object:
        """Click the panel's Run and return the card of the job it submitted (by its id, as cards move down)."""
        cards = self.page.locator("#history-list article.job")
        before = cards.count()
        panel.get_by_role("button", name="Run").click()
        self.page.wait_for_function(f"() => document.querySelectorAll('#history-list article.job').length > {before}")
        return self.card(cards.first.get_attribute("data-job-id"))

    def options(self, panel) -> None:
        """Open the panel's Options (seed, guidance, ...) unless they are open."""
        details = panel.locator("details.options")
        if details.get_attribute("open") is None:
            details.locator("summary").click()

    def assert_clean(self, expected: Iterable[str] = ()) -> None:
        """No request to another host, and no console error but Chromium's notes on failed loads matching
        one of the `expected` patterns (which the test provoked on purpose)."""
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"
        allowed = [re.compile(p) for p in expected]
        unexpected = [
            e
            for e in self.errors
            if not (e.startswith("Failed to load resource:") and any(p.search(e) for p in allowed))
        ]
        assert unexpected == [], f"console errors: {unexpected}"

    def close(self, service: Stack | None = None) -> None:
        self.context.close()
        if service is not None:  # leave the shared worker idle for the next test
            for job_id in self.jobs:
                with contextlib.suppress(Exception):  # the API may be down in the test that stops it
                    service.client.post(f"/jobs/{job_id}/cancel")


def starts(text: str) -> re.Pattern[str]:
    """For ``expect(...).to_have_text``: a text that begins with `text`."""
    return re.compile("^" + re.escape(text))


def job_id_of(card) -> str:
    return card.get_attribute("data-job-id")


def wait_image(page: Page, image) -> None:
    """Wait until an <img> has loaded its (blob) source."""
    image.wait_for()
    page.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
