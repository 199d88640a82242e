/* One panel per operation: its form, built from the schema, checked in the browser before it is sent, and
 * the server's problem+json shown beside each field it names. Run adds a card to the history; "Copy as curl"
 * gives the same request as a command line. A field left at the schema's default is not sent, so an
 * untouched form sends the API's own default request. */

import { api, problemOf, state } from "./api.js";
import { el, imageFileOf, dragsFiles } from "./dom.js";
import { curlCommand, showCommand } from "./curl.js";
import { uploadWidget, widget } from "./fields.js";
import { MaskEditor } from "./mask.js";
import { PromptViews } from "./prompts.js";
import { LABELS, fieldsOf, humanReason, labelOf } from "./schema.js";

const OPTION_FIELDS = ["guidance", "seed", "upscale", "previews", "trajectory", "priority", "cache", "webhook", "webhook_events"];
const HINTS = {
  mnist_sample: "Flow-matching models trained on MNIST: pick a digit for the class-conditioned model, or none for unguided digits.",
  if_sample: "DeepFloyd IF stage I draws a 64×64 image from the prompt.",
  if_sdedit: "Noise the photo to step i_start, then denoise it with the prompt: a small i_start means more noise and more change.",
  if_inpaint: "Paint over the photo where new content should go; the rest is kept.",
  if_anagram: "One image; each view of it (flipped, rotated, …) shows its own prompt.",
  if_hybrid: "One image that shows one prompt up close and another from afar.",
  if_denoise: "Noise the photo to timestep t with the forward process, then denoise it.",
};

export class Panel {
  constructor(op) {
    this.op = op;
    this.name = op.name;
    this.label = LABELS[op.name] || op.summary;
    this.fields = fieldsOf(op);
    this.widgets = {};
    this.tab = el("button", {
      role: "tab", id: `tab-${op.name}`, "aria-controls": `panel-${op.name}`, "aria-selected": "false",
      tabindex: -1, type: "button", text: this.label,
    });
    this.node = el("section", {
      role: "tabpanel", id: `panel-${op.name}`, "aria-labelledby": `tab-${op.name}`, class: "panel", hidden: true,
      tabindex: 0,
    });
    this.build();
  }

  build() {
    const op = this.op;
    const form = el("form", { class: "op-form", novalidate: true, "aria-label": this.label });
    form.addEventListener("submit", (event) => { event.preventDefault(); this.run(); });
    this.unavailable = el("p", { class: "notice unavailable", role: "status", hidden: true });
    const main = el("div", { class: "fields" });
    const options = el("div", { class: "fields" });
    for (const upload of op.uploads) {
      if (upload.name === "mask") {
        this.mask = new MaskEditor(op.name);
        this.widgets.mask = this.mask;
        main.append(this.mask.node);
      } else {
        const onImage = op.name === "if_inpaint" ? (bitmap) => this.mask.load(bitmap) : null;
        this.widgets[upload.name] = uploadWidget(op.name, upload.name, upload.description, onImage);
        main.append(this.widgets[upload.name].node);
      }
    }
    for (const [name, field] of Object.entries(this.fields)) {
      if (op.uploads.some((u) => u.name === name) || name === "views") continue;
      if (name === "prompts") {
        this.prompts = new PromptViews(op.name, this.fields);
        this.widgets.prompts = this.prompts;
        main.append(this.prompts.node);
        continue;
      }
      const w = widget(op.name, name, field, state.config);
      this.widgets[name] = w;
      (OPTION_FIELDS.includes(name) ? options : main).append(w.node);
    }
    this.submit = el("button", { type: "submit", class: "primary", text: "Run" });
    this.curlButton = el("button", { type: "button", text: "Copy as curl", onclick: () => this.copyCurl() });
    this.formError = el("div", { class: "problem", role: "alert", tabindex: -1, hidden: true });
    this.note = el("p", { class: "form-note", role: "status" });
    this.curlBox = el("div", { class: "curl-box", hidden: true });
    this.options = el("details", { class: "options", open: op.name === "mnist_sample" }, el("summary", { text: "Options" }), options);
    form.append(
      el("p", { class: "op-hint", text: HINTS[op.name] || op.summary }),
      this.unavailable,
      main,
      this.options,
      this.formError,
      this.note,
      el("div", { class: "row" }, this.submit, this.curlButton),
      this.curlBox,
    );
    this.form = form;
    const image = this.widgets.image;
    if (image) {
      // a drop anywhere on the form (the mask painter included) goes to its image input
      form.addEventListener("dragover", (event) => { if (dragsFiles(event)) { event.preventDefault(); form.classList.add("dropping"); } });
      form.addEventListener("dragleave", (event) => { if (!form.contains(event.relatedTarget)) form.classList.remove("dropping"); });
      form.addEventListener("drop", (event) => {
        form.classList.remove("dropping");
        if (event.defaultPrevented) return; // the image field took it
        const file = imageFileOf(event.dataTransfer) || event.dataTransfer?.files?.[0];
        if (!file) return;
        event.preventDefault();
        image.take(file);
      });
    }
    this.node.append(el("h2", { text: this.label }), form);
  }

  setAvailability(opState, upscaleState) {
    const ok = !opState || opState.available;
    this.unavailable.hidden = ok;
    this.unavailable.textContent = ok ? "" : `Unavailable: ${opState.reason || "no live worker serves it"}.`;
    this.submit.disabled = !ok;
    this.tab.classList.toggle("off", !ok);
    this.tab.title = ok ? "" : this.unavailable.textContent;
    const upscale = this.widgets.upscale;
    if (upscale) {
      const up = !upscaleState || upscaleState.available;
      upscale.input.disabled = !up;
      if (!up) upscale.input.checked = false;
      upscale.node.querySelector(".hint").textContent = up
        ? "also upscale to 256×256 with stage II"
        : `Unavailable: ${upscaleState.reason || "no live worker serves it"}.`;
    }
  }

  // ---- reading and checking the form -----------------------------------------------------------------------

  /** The request as filled: {params: [[name, text]] (fields that differ from the schema's default),
   * files: [[name, File]], problems: [{name, error, input}]}. */
  async collect() {
    const params = [];
    const files = [];
    const problems = [];
    for (const [name, w] of Object.entries(this.widgets)) {
      const result = await w.read();
      if (result.error) {
        problems.push({ name, error: result.error, input: result.input || w.input, handled: result.handled, widget: w });
      } else if (result.items) {
        for (const item of result.items) params.push(["prompts", item.prompt]);
        for (const item of result.items) params.push(["views", item.view]);
      } else if (result.file) {
        files.push([name, result.file]);
      } else if (result.text !== null && result.text !== undefined && !w.isDefault(result.text)) {
        params.push([name, result.text]);
      }
    }
    return { params, files, problems };
  }

  clearErrors() {
    this.formError.hidden = true;
    this.formError.replaceChildren();
    this.note.textContent = "";
    for (const node of this.node.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of this.node.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  /** Messages beside the fields, a summary above Run, and the focus on the first field to fix. */
  showFieldErrors(problems, intro) {
    for (const p of problems) {
      if (p.handled) continue;
      p.widget.errors.textContent = p.error;
      p.input?.setAttribute?.("aria-invalid", "true");
    }
    const names = problems.map((p) => (p.name === "prompts" ? "Prompts" : labelOf(p.name)));
    this.formError.hidden = false;
    this.formError.replaceChildren(el("strong", { text: intro }), ` ${names.join(", ")}.`);
    const first = problems.find((p) => p.input)?.input;
    (first && !first.disabled ? first : this.formError).focus();
  }

  /** A problem+json answer: each `errors` item beside its field (in people's words), the rest above Run. */
  showProblem(problem) {
    const placed = [];
    const loose = [];
    for (const error of problem.errors || []) {
      const name = String(error.name || "");
      const base = name.split(/[[.]/)[0];
      const reason = humanReason(error.reason || problem.detail, base);
      let target = this.widgets[base];
      if (this.prompts && (base === "prompts" || base === "views")) target = this.prompts.target(name);
      if (!target) {
        loose.push(`${labelOf(base || "request")}: ${reason}`);
        continue;
      }
      target.errors.textContent = reason;
      placed.push({ name: base, input: target.input });
      target.input?.setAttribute?.("aria-invalid", "true");
    }
    this.formError.hidden = false;
    if (placed.length && !loose.length) {
      this.formError.replaceChildren(
        el("strong", { text: "The service did not accept:" }),
        ` ${[...new Set(placed.map((p) => labelOf(p.name)))].join(", ")}. See the message beside each field.`,
      );
    } else {
      this.formError.replaceChildren(
        el("strong", { text: `${problem.title || "Error"}: ` }),
        loose.length ? loose.join("; ") : problem.detail || "the request failed",
      );
    }
    const first = placed.find((p) => p.input)?.input;
    (first || this.formError).focus();
  }

  request(params, files) {
    if (this.op.transport === "query") {
      const query = new URLSearchParams(params).toString();
      return { url: query ? `${this.op.path}?${query}` : this.op.path, init: { method: "POST" } };
    }
    const form = new FormData();
    for (const [name, text] of params) form.append(name, text);
    for (const [name, file] of files) form.append(name, file, file.name || `${name}.png`);
    return { url: this.op.path, init: { method: "POST", body: form } };
  }

  // ---- actions -----------------------------------------------------------------------------------------------

  async run() {
    this.clearErrors();
    const { params, files, problems } = await this.collect();
    if (problems.length) return this.showFieldErrors(problems, "Check these fields:");
    const { url, init } = this.request(params, files);
    this.submit.disabled = true;
    let response;
    try {
      response = await api(url, init);
    } catch {
      this.showProblem({ title: "The service does not answer", detail: "check that it is running, then try again." });
      return;
    } finally {
      this.submit.disabled = !this.unavailable.hidden;
    }
    if (!response.ok) return this.showProblem(await problemOf(response));
    state.history.add(await response.json(), { reveal: true });
  }

  async copyCurl() {
    this.clearErrors();
    const { params, files, problems } = await this.collect();
    if (problems.length) return this.showFieldErrors(problems, "Check these fields first:");
    showCommand(this.curlBox, curlCommand(this.op, params, files.map(([name]) => name)), files);
  }

  /** Refill every field from a job's recorded request (uploads stay as they are). */
  fill(request, what) {
    this.clearErrors();
    for (const [name, w] of Object.entries(this.widgets)) {
      if (w.upload) continue;
      if (w === this.prompts) w.set(request.prompts, request.views);
      else w.set(name in request ? request[name] : w.default);
    }
    this.options.open = true;
    const missing = Object.values(this.widgets).filter((w) => w.upload && w.name === "image" && !w.read().file);
    this.note.textContent = `${what} Filled in from the job's request.${missing.length ? " Choose the image again: the page does not keep uploads." : ""}`;
    this.show();
    const first = this.node.querySelector(".op-form input:not([type=file]), .op-form select, .op-form textarea");
    first?.focus();
  }

  setSeed(seed, what) {
    this.clearErrors();
    this.widgets.seed.set(seed);
    this.options.open = true;
    this.note.textContent = `${what} Filled in the seed.`;
    this.show();
    this.widgets.seed.input.focus();
  }

  /** A file sent from a result ("Send to"), a drop or a paste, into the image input. */
  receive(file, what) {
    const image = this.widgets.image;
    if (!image) return;
    this.clearErrors();
    image.take(file);
    this.note.textContent = `${what} is now the image.`;
    this.show();
    image.input.focus();
  }

  show() {
    state.select(this, false);
    this.node.scrollIntoView({ block: "nearest" });
  }
}
