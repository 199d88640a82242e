"""The studio and the docs in a real Chromium (Debian's ``chromium``, driven by Playwright), against a live
service: a real Redis, a worker with the shipped MNIST checkpoints and the tiny IF pipelines, and uvicorn.

Every page checks that it asked no other host for anything and logged no console error. With
``STUDIO_SCREENSHOT=path`` the inpaint test also saves the README's screenshot there.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.support import ROOT, Stack, wait_until

pytestmark = pytest.mark.browser

TIMEOUT_MS = 120_000


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: run `make setup` (installs Debian's chromium)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def service(redis_server, tiny_if, tmp_path_factory) -> Iterator[Stack]:
    """The API and one worker on the shipped MNIST checkpoints (the settings' defaults) and the tiny IF."""
    stack = Stack(redis_server.url, {**tiny_if, "PREVIEW_EVERY": "2"}, tmp_path_factory.mktemp("studio"))
    stack.start_api()
    stack.start_worker()
    wait_until(lambda: "if_inpaint" in stack.client.get("/readyz").json()["operations"], 60, what="IF ready")
    yield stack
    stack.stop()


class Page:
    """A fresh browser context and page that records requests to other hosts and console errors."""

    def __init__(self, browser, base_url: str, **context) -> None:
        self.base = base_url.rstrip("/")
        self.context = browser.new_context(accept_downloads=True, **context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.foreign: list[str] = []
        self.errors: list[str] = []
        origin = urlsplit(self.base).netloc
        self.page.on(
            "request",
            lambda r: (
                None
                if urlsplit(r.url).scheme in ("blob", "data") or urlsplit(r.url).netloc == origin
                else self.foreign.append(r.url)
            ),
        )
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str = "/") -> object:
        self.page.goto(self.base + path)
        if path == "/" or path.startswith("/#"):
            self.page.wait_for_selector("body[data-ready=true]", state="attached")
        return self.page

    def tab(self, label: str) -> object:
        self.page.get_by_role("tab", name=label).click()
        return self.page.locator("section[role=tabpanel]:not([hidden])")

    def assert_clean(self) -> None:
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"
        assert self.errors == [], f"console errors: {self.errors}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, service: Stack) -> Iterator[Page]:
    p = Page(browser, str(service.client.base_url), viewport={"width": 1280, "height": 900})
    yield p
    p.close()


def _job_id(panel) -> str:
    return panel.locator("article.job").get_attribute("aria-label").removeprefix("job ")


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_mnist_digits_are_generated_and_shown(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    panel.get_by_label("Digit", exact=True).select_option("3")
    panel.get_by_label("How many", exact=True).fill("4")
    panel.get_by_label("Steps", exact=True).fill("8")
    panel.get_by_role("button", name="Run").click()
    panel.locator(".job-status[data-status=succeeded]").wait_for()
    image = panel.locator("img.result[data-name='samples.png']")
    image.wait_for()
    page.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [112, 28]  # 4 digits of 28x28
    body = service.job(_job_id(panel))
    assert body["status"] == "succeeded" and body["params"]["digit"] == 3 and body["params"]["n"] == 4
    assert panel.locator(".manifest summary").inner_text() == "manifest.json"
    page.assert_clean()


def test_inpaint_painted_mask_progress_result_and_download(page: Page, service: Stack, tmp_path: Path) -> None:
    page.open("/")
    panel = page.tab("Inpaint")
    panel.get_by_label("Image *", exact=True).set_input_files(str(ROOT / "postman" / "photo.png"))
    canvas = panel.locator("canvas.mask-paint")
    canvas.wait_for()
    box = canvas.bounding_box()
    mouse = page.page.mouse
    mouse.move(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.2)
    mouse.down()
    for i in range(1, 16):  # a stroke down the right half
        mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * (0.2 + 0.04 * i), steps=2)
    mouse.up()
    # record every value the progress bar takes while the job runs
    page.page.evaluate(
        """() => { window.seen = []; new MutationObserver(() => {
             const bar = document.querySelector('section:not([hidden]) .job-progress');
             if (bar && !bar.dataset.watched) { bar.dataset.watched = '1';
               new MutationObserver(() => window.seen.push([bar.value, bar.max])).observe(bar, {attributes: true}); }
           }).observe(document.body, {childList: true, subtree: true}); }"""
    )
    panel.locator("details.options > summary").click()
    panel.get_by_role("checkbox", name="Upscale to 256×256 (stage II)").check()  # a longer run: two stages
    panel.get_by_role("button", name="Run").click()
    panel.locator(".job-status[data-status=succeeded]").wait_for()
    seen = page.page.evaluate("window.seen")
    fractions = [v / m for v, m in seen if m > 1]
    assert any(0 < f < 1 for f in fractions) and fractions[-1] == 1, seen  # it advanced, then finished
    assert panel.locator("img.live-preview").get_attribute("data-step")  # a preview from the stream was shown

    job_id = _job_id(panel)
    body = service.job(job_id)
    assert body["status"] == "succeeded" and body["params"]["previews"] is True
    # the mask the page sent: the photo's size, white along the stroke, black elsewhere
    folder = service.tmp / "results" / job_id / "inputs"
    photo, mask = Image.open(folder / "image"), Image.open(folder / "mask").convert("L")
    assert mask.size == photo.size
    w, h = mask.size
    assert mask.getpixel((int(w * 0.75), int(h * 0.5))) == 255 and mask.getpixel((int(w * 0.2), int(h * 0.8))) == 0
    assert sorted(set(mask.tobytes())) == [0, 255]

    upscaled = next(name for name in body["results"] if name.startswith("result_"))  # result_<stage-II size>.png
    figure = panel.locator("figure.result-figure", has=page.page.locator(f"img[data-name='{upscaled}']"))
    with page.page.expect_download() as info:
        figure.get_by_role("link", name="download").click()
    saved = tmp_path / "result.png"
    info.value.save_as(saved)
    stage1 = _png(service.client.get(body["results"]["result.png"]).content)
    assert _png(saved.read_bytes()).size[0] > stage1.size[0]  # the stage-II upscale of the stage-I result
    assert saved.read_bytes() == service.client.get(body["result_url"]).content
    shot = os.environ.get("STUDIO_SCREENSHOT")
    page.page.screenshot(path=shot or str(tmp_path / "studio.png"), full_page=True)
    page.assert_clean()


def test_cancel_a_running_job_from_the_page(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    panel.get_by_label("How many", exact=True).fill("100")
    panel.get_by_label("Steps", exact=True).fill("500")
    panel.get_by_role("button", name="Run").click()
    page.page.wait_for_function(
        "() => { const b = document.querySelector('section:not([hidden]) .job-progress'); return b && b.value > 0; }"
    )
    panel.get_by_role("button", name="Cancel").click()
    panel.locator(".job-status[data-status=canceled]").wait_for(timeout=20_000)
    body = service.job(_job_id(panel))
    assert body["status"] == "canceled" and body["progress"]["step"] < 500
    assert not panel.get_by_role("button", name="Cancel").is_visible()
    page.assert_clean()


def test_keyboard_alone_switches_tabs_paints_and_runs(page: Page, service: Stack) -> None:
    p = page.open("/")
    p.get_by_role("tab", name="MNIST digits").focus()
    p.keyboard.press("ArrowRight")
    p.keyboard.press("ArrowRight")
    p.keyboard.press("ArrowRight")
    assert p.get_by_role("tab", name="Inpaint").get_attribute("aria-selected") == "true"
    panel = p.locator("section[role=tabpanel]:not([hidden])")
    panel.get_by_label("Image *", exact=True).set_input_files(str(ROOT / "postman" / "photo.png"))  # the file chooser
    canvas = panel.locator("canvas.mask-paint")
    canvas.wait_for()
    canvas.focus()
    for key in ["Space", "ArrowRight", "ArrowRight", "ArrowDown", "Space", "e", "]"]:
        p.keyboard.press(key)
    painted = canvas.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"
    )
    assert painted > 0
    assert panel.get_by_role("button", name="Eraser").get_attribute("aria-pressed") == "true"
    # back to MNIST, then to the Run button and Enter
    p.get_by_role("tab", name="MNIST digits").focus()
    p.keyboard.press("Enter")
    mnist = p.locator("section[role=tabpanel]:not([hidden])")
    mnist.get_by_label("Steps", exact=True).focus()
    p.keyboard.press("Control+a")
    p.keyboard.type("4")
    mnist.get_by_role("button", name="Run").focus()
    p.keyboard.press("Enter")
    mnist.locator(".job-status[data-status=succeeded]").wait_for()
    page.assert_clean()


def test_errors_show_the_detail_and_each_field(page: Page) -> None:
    page.open("/")
    panel = page.tab("Hybrid")
    panel.get_by_label("Prompt seen from afar *", exact=True).fill("")
    panel.get_by_label("Kernel size", exact=True).fill("32")
    # the answer is a 422 problem+json, which Chromium logs as a failed resource: not counted below
    panel.get_by_role("button", name="Run").click()
    alert = panel.locator(".problem[role=alert]")
    alert.wait_for()
    assert "prompt_low" in alert.inner_text() and "kernel_size" in alert.inner_text()
    assert panel.locator("[data-field=prompt_low] .field-error").inner_text() == "required"
    assert "odd" in panel.locator("[data-field=kernel_size] .field-error").inner_text()
    assert panel.get_by_label("Prompt seen from afar *", exact=True).get_attribute("aria-invalid") == "true"
    page.errors = [e for e in page.errors if "status of 422" not in e]
    page.assert_clean()


def test_narrow_screen_has_one_column(browser, service: Stack) -> None:
    p = Page(browser, str(service.client.base_url), viewport={"width": 390, "height": 844})
    try:
        p.open("/")
        panel = p.tab("Anagram")
        width = p.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways ({width}px)"
        form, output = panel.locator("form.op-form").bounding_box(), panel.locator(".output").bounding_box()
        assert output["y"] >= form["y"] + form["height"] - 1  # stacked, not side by side
        p.assert_clean()
    finally:
        p.close()


def test_api_key_is_asked_once_and_panels_without_a_worker_say_why(browser, make_stack) -> None:
    stack = make_stack(API_KEY="s3cret-key", IF_ENABLED="false")
    stack.start_worker()
    p = Page(browser, str(stack.client.base_url), viewport={"width": 1280, "height": 900})
    try:
        page = p.open("/")
        dialog = page.locator("#api-key-dialog")
        dialog.wait_for()
        page.get_by_label("Key", exact=True).fill("s3cret-key")
        page.get_by_role("button", name="Use this key").click()
        panel = p.tab("Text to image")
        notice = panel.locator(".notice.unavailable")
        notice.wait_for()
        assert "IF_ENABLED=false" in notice.inner_text()
        assert panel.get_by_role("button", name="Run").is_disabled()
        panel = p.tab("MNIST digits")
        panel.get_by_label("Steps", exact=True).fill("4")
        panel.get_by_role("button", name="Run").click()
        panel.locator(".job-status[data-status=succeeded]").wait_for()
        panel.locator("img.result[data-name='samples.png']").wait_for()
        page.reload()
        page.wait_for_selector("body[data-ready=true]", state="attached")
        assert not dialog.is_visible()  # asked once per tab
        p.assert_clean()
    finally:
        p.close()


def test_docs_and_redoc_work_without_any_other_host(page: Page) -> None:
    p = page.open("/docs")
    p.locator(".opblock").first.wait_for()
    text = p.locator("#swagger-ui").inner_text()
    for path in ("/mnist/sample", "/inpaint", "/anagram", "/jobs/{job_id}/events", "/jobs/{job_id}/previews/{name}"):
        assert path in text, path
    assert p.locator(".opblock").count() >= 14
    p = page.open("/redoc")
    p.locator("h2", has_text="Follow a job: status, progress, previews").first.wait_for()
    assert "Generate MNIST digits" in p.locator("body").inner_text()
    page.assert_clean()
