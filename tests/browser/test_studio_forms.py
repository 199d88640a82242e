"""The studio's forms in Chromium: every default equals the OpenAPI schema's, the MNIST tab's untouched Run
sends the API's default request, checks in the browser speak plainly, the server's field errors land beside
their field, a file that is not an image is a message, and images can be dropped and pasted."""

from __future__ import annotations

import base64
import io
import re
import time
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.pages import Page, job_id_of, starts, wait_image
from tests.support import ROOT, Stack

pytestmark = pytest.mark.browser

PHOTO = ROOT / "postman" / "photo.png"

# The form as a user sees it: each field's value (checkbox: checked; select, number, text: its text).
READ_FORM = """panel => {
  const out = {};
  for (const field of panel.querySelectorAll("[data-field]")) {
    const name = field.dataset.field;
    if (name === "prompts") {
      out.prompts = [...field.querySelectorAll("textarea")].map((t) => t.value);
      out.views = [...field.querySelectorAll("select")].map((s) => s.value);
    } else if (name === "mask") {
      out.mask = field.querySelector("canvas.mask-paint").width;
    } else {
      const input = field.querySelector("input, select, textarea");
      out[name] = input.type === "checkbox" ? input.checked : input.type === "file" ? input.files.length : input.value;
    }
  }
  return out;
}"""


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its $ref followed, the keywords beside the $ref kept (they win), anyOf merged."""
    if "$ref" in schema:
        target = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
        schema = {**_resolve(spec, target), **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _schema_fields(spec: dict[str, Any], op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: schema} of an operation's parameters (query) or form fields, straight from /openapi.json."""
    post = spec["paths"][op["path"]]["post"]
    if op["transport"] == "query":
        return {p["name"]: _resolve(spec, p["schema"]) for p in post["parameters"] if p["in"] == "query"}
    content = post["requestBody"]["content"]
    body = _resolve(spec, next(iter(content.values()))["schema"])
    fields: dict[str, dict[str, Any]] = {}
    for part in [body, *(_resolve(spec, p) for p in body.get("allOf", []))]:
        for name, schema in part.get("properties", {}).items():
            fields[name] = _resolve(spec, schema)
    return fields


def test_every_field_of_every_tab_starts_at_the_openapi_default(page: Page, service: Stack) -> None:
    spec = service.client.get("/openapi.json").json()
    operations = service.client.get("/studio/config.json").json()["operations"]
    page.open("/")
    checked = 0
    for i, op in enumerate(operations):
        page.page.locator("[role=tab]").nth(i).click()
        panel = page.panel()
        assert panel.get_attribute("id") == f"panel-{op['name']}"
        form = panel.evaluate(READ_FORM)
        fields = _schema_fields(spec, op)
        uploads = {u["name"] for u in op["uploads"]}
        assert set(form) == set(fields) | uploads, op["name"]  # every field is on the form, and no other
        for name, schema in fields.items():
            shown = form[name]
            if name in uploads:
                assert shown == 0, (op["name"], name)  # no file chosen, no mask painted
                continue
            default = schema.get("default")
            if name == "prompts":
                assert "default" not in schema and shown == ["", ""], shown  # required, no default: empty
            elif name == "views":
                # null: the API picks identity + flip_vertical for two prompts; the page shows those two
                assert default is None and "identity + flip_vertical" in schema["description"]
                assert shown == ["identity", "flip_vertical"]
            elif isinstance(default, bool):
                assert shown is default, (op["name"], name)
            elif default is None:
                assert shown == "", (op["name"], name, shown)  # no default (or null): left empty, not sent
            elif isinstance(default, int | float):
                assert float(shown) == default, (op["name"], name, shown)
            else:
                assert shown == default, (op["name"], name, shown)
            checked += 1
        # hints say what a setting or route means instead of naming it
        for hint in panel.locator(".hint").all_inner_texts():
            assert not re.search(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|/jobs/|\bGET\b", hint), hint
    assert checked >= 30
    page.assert_clean()


def test_mnist_default_run_sends_the_apis_default_request_and_shows_digits_fast(page: Page, service: Stack) -> None:
    page.open("/")
    panel = page.tab("MNIST digits")
    posts: list[tuple[str, bytes | None]] = []
    page.page.on("request", lambda r: posts.append((r.url, r.post_data_buffer)) if r.method == "POST" else None)
    started = time.monotonic()
    card = page.run(panel)
    wait_image(page, card.locator("img.result[data-name='samples.png']"))
    took = time.monotonic() - started
    assert took < 5, f"{took:.1f}s from Run to the digits"
    assert posts == [(f"{page.base}/mnist/sample", None)]  # no parameter at all: the API's defaults
    mine = service.job(job_id_of(card))["params"]
    theirs = service.wait_terminal(service.client.post("/mnist/sample").json()["id"])["params"]
    assert mine.pop("seed") is not None and theirs.pop("seed") is not None  # each got a random seed
    assert mine == theirs and mine["sampler"] == "midpoint" and mine["steps"] <= 3, mine
    page.assert_clean()


def test_checks_in_the_browser_speak_plainly_and_send_nothing(page: Page) -> None:
    page.open("/")
    posts: list[str] = []
    page.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    panel = page.tab("Hybrid")
    panel.get_by_label("Prompt seen from afar *", exact=True).fill("   ")
    panel.get_by_label("Prompt seen up close *", exact=True).fill("waterfalls")
    panel.get_by_label("Kernel size", exact=True).fill("32")
    panel.get_by_role("button", name="Run").click()
    alert = panel.locator(".problem[role=alert]")
    expect(alert).to_have_text("Check these fields: Prompt seen from afar, Kernel size.")
    expect(panel.locator("[data-field=prompt_low] .field-error")).to_have_text("Write a prompt: it cannot be empty.")
    expect(panel.locator("[data-field=kernel_size] .field-error")).to_have_text("Choose an odd number from 1 to 63.")
    low = panel.get_by_label("Prompt seen from afar *", exact=True)
    assert low.get_attribute("aria-invalid") == "true"
    assert low.evaluate("node => node === document.activeElement")  # the first field to fix has the focus

    panel = page.tab("MNIST digits")
    many = panel.get_by_label("How many", exact=True)
    many.focus()
    page.page.keyboard.press("Control+a")
    page.page.keyboard.type("1e")  # not a number: it must not send the default instead
    panel.get_by_role("button", name="Run").click()
    error = panel.locator("[data-field=n] .field-error")
    expect(error).to_have_text("Not a number: type digits only, for example 10.")
    many.fill("500")
    panel.get_by_label("Guidance", exact=True).fill("-1")
    panel.get_by_role("button", name="Copy as curl").click()  # the same checks before a command is shown
    expect(error).to_have_text("Enter a whole number from 1 to 100.")
    expect(panel.locator("[data-field=guidance] .field-error")).to_have_text("Enter a number from 0 to 30.")
    expect(panel.locator(".curl-box")).to_be_hidden()
    assert posts == []
    page.assert_clean()


def test_the_services_field_errors_are_shown_beside_the_field_in_plain_words(page: Page) -> None:
    page.open("/")
    panel = page.tab("SDEdit")
    # 4x4: an image the browser reads, but smaller than the service accepts (a check only the server makes)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    tiny = buffer.getvalue()
    panel.get_by_label("Image *", exact=True).set_input_files(
        files=[{"name": "tiny.png", "mimeType": "image/png", "buffer": tiny}]
    )
    panel.locator("img.upload-preview:not([hidden])").wait_for()
    panel.get_by_role("button", name="Run").click()
    alert = panel.locator(".problem[role=alert]")
    alert.wait_for()
    expect(alert).to_have_text("The service did not accept: Image. See the message beside each field.")
    expect(panel.locator("[data-field=image] .field-error")).to_have_text("4x4 is smaller than 8x8")
    assert panel.get_by_label("Image *", exact=True).get_attribute("aria-invalid") == "true"
    page.assert_clean(expected=[r"status of 422"])  # Chromium's note on the 422 answer this test asks for


def test_a_file_that_is_not_an_image_is_a_message_on_its_field(page: Page) -> None:
    page.open("/")
    panel = page.tab("Inpaint")
    image = panel.get_by_label("Image *", exact=True)
    image.set_input_files(str(PHOTO))
    stage = panel.locator(".mask-stage")
    stage.wait_for()
    image.set_input_files(files=[{"name": "notes.txt", "mimeType": "image/png", "buffer": b"not a picture"}])
    error = panel.locator("[data-field=image] .field-error")
    expect(error).to_have_text("“notes.txt” is not an image this browser can read. Choose a PNG, JPEG or WebP file.")
    expect(stage).to_be_hidden()  # the old photo is gone
    expect(panel.locator(".mask-empty")).to_be_visible()
    assert image.evaluate("input => input.files.length") == 0
    panel.get_by_role("button", name="Run").click()
    expect(panel.locator("[data-field=mask] .field-error")).to_have_text(starts("Choose a photo above first"))

    panel = page.tab("SDEdit")
    panel.get_by_label("Image *", exact=True).set_input_files(str(PHOTO))
    preview = panel.locator("img.upload-preview")
    preview.wait_for()
    panel.get_by_label("Image *", exact=True).set_input_files(
        files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff broken"}]
    )
    expect(panel.locator("[data-field=image] .field-error")).to_have_text(starts("“broken.jpg” is not an image"))
    expect(preview).to_be_hidden()
    page.assert_clean()


DROP = """([selector, b64, name, how]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/png" }));
  const target = document.querySelector(selector);
  if (how === "drop") {
    target.dispatchEvent(new DragEvent("dragover", { bubbles: true, cancelable: true, dataTransfer: transfer }));
    target.dispatchEvent(new DragEvent("drop", { bubbles: true, cancelable: true, dataTransfer: transfer }));
  } else {
    target.dispatchEvent(new ClipboardEvent("paste", { bubbles: true, cancelable: true, clipboardData: transfer }));
  }
}"""


def test_images_can_be_dropped_on_a_form_and_pasted(page: Page) -> None:
    photo = base64.b64encode(PHOTO.read_bytes()).decode()
    page.open("/")
    page.tab("Inpaint")
    page.page.evaluate(DROP, ["#panel-if_inpaint .mask-field", photo, "dropped.png", "drop"])  # onto the painter
    page.panel().locator(".mask-stage").wait_for()
    assert page.panel().locator("input[type=file]").evaluate("i => i.files[0].name") == "dropped.png"

    page.tab("SDEdit")  # dropped beside the form: still the shown tab's image
    page.page.evaluate(DROP, ["#history", photo, "beside.png", "drop"])
    page.panel().locator("img.upload-preview").wait_for()
    assert page.panel().locator("input[type=file]").evaluate("i => i.files[0].name") == "beside.png"
    expect(page.panel().locator(".form-note")).to_have_text("The dropped “beside.png” is now the image.")

    page.tab("Denoise")
    page.page.evaluate(DROP, ["body", photo, "pasted.png", "paste"])
    page.panel().locator("img.upload-preview").wait_for()
    assert page.panel().locator("input[type=file]").evaluate("i => i.files[0].name") == "pasted.png"
    expect(page.panel().locator(".form-note")).to_have_text("The pasted “pasted.png” is now the image.")
    page.assert_clean()


def test_the_services_validation_reasons_are_reworded_for_people(page: Page) -> None:
    """The checks in the browser catch these first; a service with other limits would still send them."""
    page.open("/")
    said = page.page.evaluate(
        """async (cases) => { const { humanReason } = await import("/studio/schema.js");
                              return cases.map(([reason, name]) => humanReason(reason, name)); }""",
        [
            ["Field required", "prompt_low"],
            ["String should match pattern '\\S'", "prompt"],
            ["Value error, must be odd", "kernel_size"],
            ["Input should be less than or equal to 100", "n"],
            ["Input should be greater than 0", "sigma"],
            ["Input should be a valid integer, unable to parse string as an integer", "n"],
            ["Input should be 'euler', 'heun' or 'midpoint'", "sampler"],
            ["List should have at least 2 items after validation, not 1", "prompts"],
        ],
    )
    assert said == [
        "Write a prompt: it cannot be empty.",
        "Cannot be blank: write some text.",
        "Must be odd.",
        "Too large: at most 100.",
        "Too small: more than 0.",
        "Enter a whole number.",
        "Choose euler, heun or midpoint.",
        "Give at least 2.",
    ]
    page.assert_clean()
