"""The studio's jobs in Chromium: the history across a reload with jobs still running, several at once, clear
and expired entries, seeds and "Reuse settings" (same bytes), "Send to", "Copy as curl" run in bash, and a
card that loses its connection while the API is stopped and recovers when it is back."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
import redis
from playwright.sync_api import expect

from tests.browser.pages import Page, job_id_of, starts, wait_image
from tests.support import ROOT, Stack, wait_until

pytestmark = pytest.mark.browser

PHOTO = ROOT / "postman" / "photo.png"


def _progress(card) -> float:
    return card.locator(".job-progress").evaluate("bar => bar.value")


def _stored(page: Page) -> list[dict]:
    return page.page.evaluate("JSON.parse(localStorage.getItem('studio.history.v1') || '[]')")


def test_history_lists_jobs_across_a_reload_and_follows_the_running_ones(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    panel.get_by_label("Digit", exact=True).select_option("3")
    panel.get_by_label("How many", exact=True).fill("4")
    done = page.run(panel)
    done.locator(".job-status[data-status=succeeded]").wait_for()
    done_id = job_id_of(done)
    # two long jobs at once (the worker batches MNIST jobs, so both may run), each with its own card and Cancel
    panel.get_by_label("Digit", exact=True).select_option("")
    panel.get_by_label("How many", exact=True).fill("100")
    panel.get_by_label("Steps", exact=True).fill("400")
    long_ids = [job_id_of(page.run(panel)) for _ in range(2)]
    assert len({done_id, *long_ids}) == 3
    for job_id in long_ids:
        page.card(job_id).locator(".job-status[data-status=running]").wait_for()
    expect(page.page.locator("#queue-summary")).to_have_text(starts("Your jobs: 2 running, 0 queued"))

    page.reload()
    ids = [job_id_of(c) for c in page.page.locator("#history-list article.job").all()]
    assert ids == [*reversed(long_ids), done_id]  # newest first
    assert {e["id"] for e in _stored(page)} == set(ids)
    # the finished one shows its result; the running ones continue live
    wait_image(page, page.card(done_id).locator("img.thumb"))
    expect(page.card(done_id).locator(".job-status")).to_have_text("Succeeded")
    for job_id in long_ids:
        card = page.card(job_id)
        card.locator(".job-status[data-status=running]").wait_for()
        card.locator(".job-progress[value]").wait_for(state="attached")
        before = _progress(card)
        page.page.wait_for_function(
            f"() => document.querySelector(\"[data-job-id='{job_id}'] .job-progress\").value > {before}"
        )
    expect(page.page.locator("#queue-summary")).to_have_text(starts("Your jobs: 2 running, 0 queued"))
    for job_id in long_ids:
        card = page.card(job_id)
        card.get_by_role("button", name="Cancel").click()
        card.locator(".job-status[data-status=canceled]").wait_for()
        assert service.job(job_id)["status"] == "canceled"
    expect(page.page.locator("#queue-summary")).to_have_text(starts("Your jobs: 0 running, 0 queued"))
    page.assert_clean()


def test_at_most_three_cards_hold_a_stream_and_the_others_poll(page: Page, service: Stack) -> None:
    """Chromium opens at most six connections to a host: four open event streams would starve the page."""
    streams: set[str] = set()
    page.open("/")
    page.page.on("request", lambda r: streams.add(r.url.split("/")[-2]) if r.url.endswith("/events") else None)
    panel = page.tab("MNIST digits")
    panel.get_by_label("How many", exact=True).fill("100")
    panel.get_by_label("Steps", exact=True).fill("400")
    ids = [job_id_of(page.run(panel)) for _ in range(4)]
    for job_id in ids:  # every card advances, the fourth by polling GET /jobs/{id}
        page.page.wait_for_function(
            f"() => document.querySelector(\"[data-job-id='{job_id}'] .job-progress\").value > 0"
        )
    assert streams == set(ids[:3])
    page.card(ids[0]).get_by_role("button", name="Cancel").click()
    page.card(ids[0]).locator(".job-status[data-status=canceled]").wait_for()
    wait_until(lambda: ids[3] in streams, 10, what="the fourth card to take the free stream")
    for job_id in ids[1:]:
        page.card(job_id).get_by_role("button", name="Cancel").click()
        page.card(job_id).locator(".job-status[data-status=canceled]").wait_for()
    page.assert_clean()


def test_clear_one_or_all_and_expired_jobs_are_marked_not_errors(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    for _ in range(2):
        page.run(panel).locator(".job-status[data-status=succeeded]").wait_for()
    kept, expired = (job_id_of(c) for c in page.page.locator("#history-list article.job").all())
    # the service forgets one job (as when its results expire) and never knew another
    redis.Redis.from_url(service.redis_url).delete(f"rq:job:{expired}")
    unknown = "0" * 32
    page.page.evaluate(
        """id => { const all = JSON.parse(localStorage.getItem('studio.history.v1'));
                   all.push({id, kind: 'mnist_sample', at: 1, status: 'succeeded', params: {n: 3}});
                   localStorage.setItem('studio.history.v1', JSON.stringify(all)); }""",
        unknown,
    )
    page.reload()
    page.card(expired).locator(".job-status[data-status=expired]").wait_for()
    page.card(unknown).locator(".job-status[data-status=missing]").wait_for()
    expect(page.card(expired).locator(".job-status")).to_have_text(starts("Expired"))
    assert page.page.locator("#history-list .problem").count() == 0  # marked, not shown as errors
    page.card(kept).locator(".job-status[data-status=succeeded]").wait_for()

    page.page.get_by_role("button", name=f"Remove job {expired[:8]} from the history").click()
    assert page.card(expired).count() == 0 and expired not in {e["id"] for e in _stored(page)}
    page.page.get_by_role("button", name="Clear finished").click()
    assert page.page.locator("#history-list article.job").count() == 0 and _stored(page) == []
    expect(page.page.locator("#history-empty")).to_be_visible()
    page.reload()
    assert page.page.locator("#history-list article.job").count() == 0
    page.assert_clean(expected=[r"status of 410", r"status of 404"])  # what the expired and unknown jobs answer


def test_reuse_settings_gives_the_same_bytes_and_reuse_seed_fills_the_seed(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    panel.get_by_label("Digit", exact=True).select_option("5")
    panel.get_by_label("How many", exact=True).fill("4")
    panel.get_by_label("Seed", exact=True).fill("1234")
    first = page.run(panel)
    first.locator(".job-status[data-status=succeeded]").wait_for()
    first_id = job_id_of(first)
    manifest = service.client.get(f"/jobs/{first_id}/files/manifest.json").json()
    assert manifest["seed"] == 1234
    expect(first.locator(".seed-value")).to_have_text("1234")
    # change everything, then take the job's settings back
    panel.get_by_label("Digit", exact=True).select_option("2")
    panel.get_by_label("How many", exact=True).fill("7")
    panel.get_by_label("Seed", exact=True).fill("")
    panel.get_by_label("Sampler", exact=True).select_option("euler")
    first.get_by_role("button", name="Reuse settings").click()
    expect(panel.get_by_label("Digit", exact=True)).to_have_value("5")
    expect(panel.get_by_label("How many", exact=True)).to_have_value("4")
    expect(panel.get_by_label("Seed", exact=True)).to_have_value("1234")
    expect(panel.get_by_label("Sampler", exact=True)).to_have_value("midpoint")
    expect(panel.get_by_label("Steps", exact=True)).to_have_value(str(manifest["request"]["steps"]))
    second = page.run(panel)
    assert job_id_of(second) != first_id
    second.locator(".job-status[data-status=succeeded]").wait_for()
    a, b = (service.client.get(f"/jobs/{i}/result").content for i in (first_id, job_id_of(second)))
    assert a == b and a[:8] == b"\x89PNG\r\n\x1a\n"  # the same bytes

    # an unseeded job shows the seed it got, and "Reuse seed" fills only the seed
    panel.get_by_label("Seed", exact=True).fill("")
    panel.get_by_label("How many", exact=True).fill("2")
    third = page.run(panel)
    third.locator(".job-status[data-status=succeeded]").wait_for()
    seed = str(service.job(job_id_of(third))["params"]["seed"])
    expect(third.locator(".seed-value")).to_have_text(seed)
    panel.get_by_label("How many", exact=True).fill("9")
    third.get_by_role("button", name="Reuse seed").click()
    seed_field = panel.get_by_label("Seed", exact=True)
    assert seed_field.input_value() == seed and panel.get_by_label("How many", exact=True).input_value() == "9"
    assert seed_field.evaluate("node => node === document.activeElement")
    page.assert_clean()


def _file_bytes(locator) -> bytes:
    b64 = locator.evaluate(
        """async input => { const bytes = new Uint8Array(await input.files[0].arrayBuffer());
                            let s = ""; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }"""
    )
    return base64.b64decode(b64)


def test_send_to_puts_a_result_into_another_tabs_image_input(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("Text to image")
    panel.get_by_label("Prompt *", exact=True).fill("a red cube on a table")
    card = page.run(panel)
    card.locator(".job-status[data-status=succeeded]").wait_for()
    result = service.client.get(service.job(job_id_of(card))["result_url"]).content
    figure = card.locator("figure.result-figure", has=page.page.locator("img[data-name='result.png']"))
    wait_image(page, figure.locator("img"))

    figure.locator(".send-to summary").click()
    figure.get_by_role("button", name="Send result.png to SDEdit").click()
    sdedit = page.panel()
    assert sdedit.get_attribute("id") == "panel-if_sdedit"
    image = sdedit.get_by_label("Image *", exact=True)
    assert _file_bytes(image) == result
    wait_image(page, sdedit.locator("img.upload-preview"))
    assert image.evaluate("node => node === document.activeElement")
    edited = page.run(sdedit)
    edited.locator(".job-status[data-status=succeeded]").wait_for()
    inputs = service.tmp / "results" / job_id_of(edited) / "inputs"
    assert (inputs / "image").read_bytes() == result  # the service got exactly the result

    figure.locator(".send-to summary").click()
    figure.get_by_role("button", name="Send result.png to Inpaint").click()
    inpaint = page.panel()
    inpaint.locator(".mask-stage").wait_for()
    width = inpaint.locator("canvas.mask-photo").evaluate("c => c.width")
    assert width == figure.locator("img").evaluate("img => img.naturalWidth")  # the photo under the painter
    page.assert_clean()


def _bash(command: str, cwd: Path) -> dict:
    out = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_copy_as_curl_run_in_bash_submits_the_same_job(page: Page, service: Stack, tmp_path: Path) -> None:
    page.open("/")
    # a query operation
    panel = page.tab("MNIST digits")
    panel.get_by_label("Digit", exact=True).select_option("3")
    panel.get_by_label("How many", exact=True).fill("5")
    panel.get_by_label("Guidance", exact=True).fill("2")
    panel.get_by_label("Seed", exact=True).fill("77")
    panel.get_by_role("button", name="Copy as curl").click()
    command = panel.locator("textarea.curl-command").input_value()
    assert command.startswith(f"curl -sS -X POST '{page.base}/mnist/sample?") and "-H 'Prefer: wait=60'" in command
    by_curl = service.wait_terminal(_bash(command, tmp_path)["id"])
    card = page.run(panel)
    card.locator(".job-status[data-status=succeeded]").wait_for()
    assert by_curl["params"] == service.job(job_id_of(card))["params"]
    assert by_curl["params"]["digit"] == 3 and by_curl["params"]["seed"] == 77

    # a form operation with a prompt that bash must not touch, then the job's own command from its card
    panel = page.tab("Text to image")
    prompt = """it's a "cube" $HOME `id` \\ @me & <x>; 100%"""
    panel.get_by_label("Prompt *", exact=True).fill(prompt)
    page.options(panel)
    panel.get_by_label("Seed", exact=True).fill("5")
    panel.get_by_role("button", name="Copy as curl").click()
    command = panel.locator("textarea.curl-command").input_value()
    by_curl = service.job(_bash(command, tmp_path)["id"])
    assert by_curl["params"]["prompt"] == prompt
    card = page.run(panel)
    card.locator(".job-status[data-status=succeeded]").wait_for()
    assert by_curl["params"] == service.job(job_id_of(card))["params"]
    card.get_by_role("button", name="Copy as curl").click()
    again = service.job(_bash(card.locator("textarea.curl-command").input_value(), tmp_path)["id"])
    assert again["params"] == by_curl["params"]

    # an upload: -F image=@image.png, with the file to save first offered as a download
    panel = page.tab("SDEdit")
    panel.get_by_label("Image *", exact=True).set_input_files(str(PHOTO))
    page.options(panel)
    panel.get_by_label("Seed", exact=True).fill("9")
    panel.get_by_role("button", name="Copy as curl").click()
    command = panel.locator("textarea.curl-command").input_value()
    assert "-F image=@image.png" in command
    with page.page.expect_download() as info:
        panel.locator(".curl-box").get_by_role("link", name="image.png").click()
    info.value.save_as(tmp_path / "image.png")
    job_id = _bash(command, tmp_path)["id"]
    card = page.run(panel)
    card.locator(".job-status[data-status=succeeded]").wait_for()
    assert service.job(job_id)["params"] == service.job(job_id_of(card))["params"]
    for i in (job_id, job_id_of(card)):  # the second may be answered from the result cache: its source ran
        ran = service.job(i).get("source") or i
        assert (service.tmp / "results" / ran / "inputs" / "image").read_bytes() == PHOTO.read_bytes()
    page.assert_clean()


def test_a_card_says_connection_lost_while_the_api_is_down_and_recovers(browser, make_stack) -> None:
    stack = make_stack()  # its own API, to stop and start again; tiny MNIST checkpoints
    stack.start_worker()
    page = Page(browser, str(stack.client.base_url), viewport={"width": 1280, "height": 900})
    try:
        page.open("/")
        panel = page.tab("MNIST digits")
        panel.get_by_label("How many", exact=True).fill("100")
        panel.get_by_label("Steps", exact=True).fill("500")  # about 18 s on this machine
        card = page.run(panel)
        job_id = job_id_of(card)
        page.page.wait_for_function("() => document.querySelector('#history-list .job-progress').value > 0")

        stack.api.terminate()
        stack.api.wait(15)
        conn = card.locator(".job-conn")
        conn.wait_for(timeout=15_000)
        expect(conn).to_have_text("Connection lost, retrying…")
        assert card.get_attribute("data-connection") == "lost"
        step = _progress(card)
        assert card.locator(".job-status[data-status=running]").count() == 1

        stack.start_api()  # the same port
        card.locator(".job-status[data-status=succeeded]").wait_for(timeout=60_000)
        expect(conn).to_be_hidden()
        assert card.get_attribute("data-connection") is None
        assert _progress(card) == 500 > step
        wait_image(page, card.locator("img.result[data-name='samples.png']"))
        assert stack.job(job_id)["status"] == "succeeded"
        wait_until(lambda: "live worker" in page.page.locator("#service-state").inner_text(), 15)
        # Chromium's notes on the requests refused while the API was down
        page.assert_clean(expected=[r"net::ERR_"])
    finally:
        page.close(stack)
