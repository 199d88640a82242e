"""The studio and the docs in a real Chromium: each operation's form, the mask painter, progress, cancel,
the keyboard, errors, a narrow screen, the API key (fixtures in conftest.py).

Every page checks that it asked no other host for anything and logged no console error. With
``STUDIO_SCREENSHOT=path`` the inpaint test also saves the README's screenshot there.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.pages import Page, job_id_of, wait_image
from tests.support import ROOT, Stack

pytestmark = pytest.mark.browser


def _png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_mnist_digits_are_generated_and_shown(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    panel.get_by_label("Digit", exact=True).select_option("3")
    panel.get_by_label("How many", exact=True).fill("4")
    panel.get_by_label("Steps", exact=True).fill("8")
    card = page.run(panel)
    card.locator(".job-status[data-status=succeeded]").wait_for()
    image = card.locator("img.result[data-name='samples.png']")
    wait_image(page, image)
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [112, 28]  # 4 digits of 28x28
    body = service.job(job_id_of(card))
    assert body["status"] == "succeeded" and body["params"]["digit"] == 3 and body["params"]["n"] == 4
    expect(card.locator(".manifest summary")).to_have_text("manifest.json")
    expect(card.locator(".seed-value")).to_have_text(str(body["params"]["seed"]))  # the seed it ran with
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
             const bar = document.querySelector('#history-list .job-progress');
             if (bar && !bar.dataset.watched) { bar.dataset.watched = '1';
               new MutationObserver(() => window.seen.push([bar.value, bar.max])).observe(bar, {attributes: true}); }
           }).observe(document.body, {childList: true, subtree: true}); }"""
    )
    panel.locator("details.options > summary").click()
    panel.get_by_role("checkbox", name="Upscale to 256×256 (stage II)").check()  # a longer run: two stages
    panel.get_by_role("checkbox", name="Live previews").check()
    card = page.run(panel)
    card.locator("img.live-preview[data-step]").wait_for(state="attached")  # a preview from the stream was shown
    card.locator(".job-status[data-status=succeeded]").wait_for()
    seen = page.page.evaluate("window.seen")
    fractions = [v / m for v, m in seen if m > 1]
    assert any(0 < f < 1 for f in fractions) and fractions[-1] == 1, seen  # it advanced, then finished
    expect(card.locator(".preview-figure")).to_be_hidden()  # the last live preview gave way to the result

    job_id = job_id_of(card)
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
    figure = card.locator("figure.result-figure", has=page.page.locator(f"img[data-name='{upscaled}']"))
    wait_image(page, figure.locator("img"))
    with page.page.expect_download() as info:
        figure.get_by_role("link", name=f"download {upscaled}").click()
    saved = tmp_path / "result.png"
    info.value.save_as(saved)
    stage1 = _png(service.client.get(body["results"]["result.png"]).content)
    assert _png(saved.read_bytes()).size[0] > stage1.size[0]  # the stage-II upscale of the stage-I result
    assert saved.read_bytes() == service.client.get(body["result_url"]).content
    shot = os.environ.get("STUDIO_SCREENSHOT")
    page.page.evaluate("document.activeElement.blur()")  # no focus ring in the README's picture
    page.page.screenshot(path=shot or str(tmp_path / "studio.png"), full_page=True)
    page.assert_clean()


def test_cancel_a_running_job_from_the_page(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    panel.get_by_label("How many", exact=True).fill("100")
    panel.get_by_label("Steps", exact=True).fill("500")
    card = page.run(panel)
    page.page.wait_for_function(
        "() => { const b = document.querySelector('#history-list .job-progress'); return b && b.value > 0; }"
    )
    card.get_by_role("button", name="Cancel").click()
    card.locator(".job-status[data-status=canceled]").wait_for(timeout=20_000)
    body = service.job(job_id_of(card))
    assert body["status"] == "canceled" and body["progress"]["step"] < 500
    expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
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
    card = page.card()
    card.locator(".job-status[data-status=succeeded]").wait_for()
    assert card.evaluate("node => node.contains(document.activeElement)")  # the focus moved to the new card
    page.assert_clean()


def test_narrow_screen_has_one_column_and_run_scrolls_to_the_new_card(browser, service: Stack) -> None:
    p = Page(browser, str(service.client.base_url), viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        p.open("/")
        panel = p.tab("Anagram")
        width = p.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways ({width}px)"
        form, rail = panel.locator("form.op-form").bounding_box(), p.page.locator("#history").bounding_box()
        assert rail["y"] >= form["y"] + form["height"] - 1  # stacked, not side by side
        panel = p.tab("MNIST digits")
        panel.get_by_role("button", name="Run").click()
        card = p.card()
        card.locator(".job-status[data-status=succeeded]").wait_for()
        box = card.bounding_box()  # relative to the viewport: the page scrolled down to the card
        assert 0 <= box["y"] < 844, box
        assert card.evaluate("node => node.contains(document.activeElement)")
        assert p.page.evaluate("document.documentElement.scrollWidth") <= 390
        p.assert_clean()
    finally:
        p.close(service)


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
        p.card().locator(".job-status[data-status=succeeded]").wait_for()
        wait_image(p, p.card().locator("img.result[data-name='samples.png']"))
        page.reload()
        page.wait_for_selector("body[data-ready=true]", state="attached")
        expect(dialog).to_be_hidden()  # asked once per tab
        wait_image(p, p.card().locator("img.result[data-name='samples.png']"))  # the history sends the key too
        # the copied command carries the key, and works
        panel = p.tab("MNIST digits")
        panel.get_by_role("button", name="Copy as curl").click()
        command = panel.locator("textarea.curl-command").input_value()
        assert command.endswith(" -H 'X-API-Key: s3cret-key'"), command
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
        stack.client.headers["X-API-Key"] = "s3cret-key"
        assert stack.wait_terminal(json.loads(out.stdout)["id"])["status"] == "succeeded"
        p.assert_clean()
    finally:
        p.close(stack)


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
