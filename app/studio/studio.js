/* The studio: one panel per operation of the service, built from /openapi.json (fields, defaults, limits),
 * /studio/config.json (operations, whether an API key is needed) and /readyz (which operations a live worker
 * serves). Jobs are followed on GET /jobs/{id}/events, read with fetch() so that the X-API-Key header can be
 * sent (EventSource cannot send headers), and resumed with Last-Event-ID when the connection drops.
 * No build step, no library, no request to any other host. */
"use strict";

const KEY_STORAGE = "studio.apiKey";
const SLIDERS = new Set(["i_start", "t"]);
const OPTION_FIELDS = ["guidance", "seed", "upscale", "previews", "trajectory", "webhook", "webhook_events"];
const LABELS = {
  mnist_sample: "MNIST digits",
  if_sample: "Text to image",
  if_sdedit: "SDEdit",
  if_inpaint: "Inpaint",
  if_anagram: "Anagram",
  if_hybrid: "Hybrid",
  if_denoise: "Denoise",
};
const FIELD_LABELS = {
  i_start: "Start step (i_start)",
  t: "Noise level t",
  n: "How many",
  prompt_low: "Prompt seen from afar",
  prompt_high: "Prompt seen up close",
  kernel_size: "Kernel size",
  previews: "Live previews",
  trajectory: "Trajectory GIF",
  upscale: "Upscale to 256×256 (stage II)",
  webhook: "Webhook URL",
  webhook_events: "Webhook events",
};
const DEFAULTS = {
  if_sample: { prompt: "an oil painting of a snowy mountain village" },
  if_hybrid: { prompt_low: "a lithograph of a skull", prompt_high: "a lithograph of waterfalls" },
};
const HINTS = {
  mnist_sample: "Flow-matching models trained on MNIST: pick a digit for the class-conditioned model, or none for unguided digits.",
  if_sample: "DeepFloyd IF stage I draws a 64×64 image from the prompt.",
  if_sdedit: "Noise the photo to step i_start, then denoise it with the prompt: a small i_start means more noise and more change.",
  if_inpaint: "Paint over the photo where new content should go; the rest is kept.",
  if_anagram: "One image; each view of it (flipped, rotated, …) shows its own prompt.",
  if_hybrid: "One image that shows one prompt up close and another from afar.",
  if_denoise: "Noise the photo to timestep t with the forward process, then denoise it.",
};

const state = { config: null, spec: null, ready: null, apiKey: sessionStorage.getItem(KEY_STORAGE) || "", panels: {} };

// ---- small helpers -------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

let uid = 0;
const nextId = (prefix) => `${prefix}-${++uid}`;

function headers(extra = {}) {
  return state.apiKey ? { ...extra, "X-API-Key": state.apiKey } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) {
    askForKey("The service refused the key; enter it again.");
  }
  return response;
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { detail: `${response.status} ${response.statusText}` };
  }
}

/** A result or preview as a blob: URL (img and a[download] cannot send the API key themselves). */
async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

function resolve(schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return resolve(state.spec.components.schemas[name]);
  }
  return schema || {};
}

/** The non-null branch of an `anyOf [T, null]`, and whether null is allowed. */
function nonNull(schema) {
  schema = resolve(schema);
  if (schema.anyOf) {
    const branches = schema.anyOf.map(resolve);
    const real = branches.filter((b) => b.type !== "null");
    return { schema: { ...real[0], ...without(schema, "anyOf") }, nullable: real.length < branches.length };
  }
  return { schema, nullable: false };
}

function without(object, key) {
  const copy = { ...object };
  delete copy[key];
  return copy;
}

/** Every field of an operation: {name: {schema, required}} in the order of the OpenAPI document. */
function fieldsOf(op) {
  const post = state.spec.paths[op.path].post;
  const fields = {};
  if (op.transport === "query") {
    for (const p of post.parameters || []) {
      if (p.in === "query") fields[p.name] = { schema: p.schema, required: !!p.required };
    }
    return fields;
  }
  const content = post.requestBody.content; // multipart with uploads, urlencoded without (both accept multipart)
  const body = resolve((content["multipart/form-data"] || Object.values(content)[0]).schema);
  const parts = [body, ...(body.allOf || []).map(resolve)];
  const required = new Set(parts.flatMap((p) => p.required || []));
  for (const part of parts.reverse()) {
    for (const [name, schema] of Object.entries(part.properties || {})) {
      fields[name] = { schema, required: required.has(name) };
    }
  }
  return fields;
}

function labelOf(name) {
  return FIELD_LABELS[name] || name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, " ");
}

// ---- API key ---------------------------------------------------------------------------------------------

function askForKey(message = "") {
  const dialog = document.getElementById("api-key-dialog");
  document.getElementById("api-key-error").textContent = message;
  document.getElementById("api-key-input").value = state.apiKey;
  if (!dialog.open) dialog.showModal();
}

function setUpKeyDialog() {
  const form = document.getElementById("api-key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = document.getElementById("api-key-input").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    document.getElementById("api-key-dialog").close();
  });
  const button = document.getElementById("api-key-button");
  button.addEventListener("click", () => askForKey());
  if (state.config.api_key_required) {
    button.hidden = false;
    if (!state.apiKey) askForKey();
  }
}

// ---- field widgets ---------------------------------------------------------------------------------------

/** One labelled input for a schema field; returns {node, read(), focus target, errors element}. */
function widget(opName, name, field, overrides = {}) {
  const { schema, nullable } = nonNull(field.schema);
  const id = nextId(`${opName}-${name}`);
  const errorId = `${id}-error`;
  const hintId = `${id}-hint`;
  const description = schema.description || resolve(field.schema).description || "";
  const common = { id, name, "aria-describedby": `${hintId} ${errorId}` };
  let input;
  let read;
  const def = overrides.default !== undefined ? overrides.default : schema.default;
  const enumValues = schema.enum;
  if (schema.type === "boolean") {
    input = el("input", { ...common, type: "checkbox" });
    input.checked = def === true;
    read = () => (input.checked ? "true" : "false");
  } else if (enumValues && !(schema.type === "integer" && enumValues.length > 12)) {
    input = el("select", common, enumValues.map((v) => el("option", { value: v, text: String(v).replace(/_/g, " ") })));
    if (def !== undefined) input.value = String(def);
    read = () => input.value;
  } else if (schema.type === "integer" && nullable && schema.maximum !== undefined && schema.maximum - (schema.minimum || 0) <= 12) {
    const options = [el("option", { value: "", text: "none (unguided)" })];
    for (let v = schema.minimum || 0; v <= schema.maximum; v++) options.push(el("option", { value: v, text: String(v) }));
    input = el("select", common, options);
    input.value = def === null || def === undefined ? "" : String(def);
    read = () => input.value;
  } else if ((schema.type === "integer" || schema.type === "number") && SLIDERS.has(name)) {
    const output = el("output", { for: id, class: "slider-value", text: String(def) });
    const range = el("input", {
      ...common, type: "range", min: schema.minimum, max: schema.maximum, step: 1, value: def,
    });
    range.addEventListener("input", () => { output.textContent = range.value; });
    read = () => range.value;
    input = el("div", { class: "slider" }, range, output);
  } else if (schema.type === "integer" || schema.type === "number") {
    const attrs = { ...common, type: "number", inputmode: schema.type === "integer" ? "numeric" : "decimal" };
    if (schema.minimum !== undefined) attrs.min = schema.minimum;
    if (schema.exclusiveMinimum !== undefined) attrs.min = schema.exclusiveMinimum;
    if (schema.maximum !== undefined && schema.maximum < 1e15) attrs.max = schema.maximum;
    attrs.step = schema.type === "integer" ? (name === "kernel_size" ? 2 : 1) : "any";
    if (nullable) attrs.placeholder = name === "seed" ? "random" : "none";
    input = el("input", attrs);
    if (def !== null && def !== undefined) input.value = String(def);
    read = () => input.value.trim();
  } else {
    const attrs = { ...common, type: "text", autocomplete: "off", spellcheck: "true" };
    if (schema.maxLength) attrs.maxlength = schema.maxLength;
    if (field.required) attrs.required = true;
    input = el(name.startsWith("prompt") ? "textarea" : "input", { ...attrs, rows: 2 });
    if (name.startsWith("prompt")) input.removeAttribute("type");
    if (def) input.value = def;
    else if (schema.examples && schema.examples.length) input.placeholder = String(schema.examples[0]);
    read = () => input.value;
  }
  const limits = [];
  if (schema.minimum !== undefined && schema.maximum !== undefined && schema.maximum < 1e15) limits.push(`${schema.minimum} to ${schema.maximum}`);
  else if (schema.maximum !== undefined && schema.maximum < 1e15) limits.push(`at most ${schema.maximum}`);
  if (schema.maxLength) limits.push(`at most ${schema.maxLength} characters`);
  const hint = [description, limits.length ? `(${limits.join(", ")})` : ""].filter(Boolean).join(" ");
  const checkbox = schema.type === "boolean";
  const label = el("label", { for: id, text: labelOf(name) + (field.required ? " *" : "") });
  const node = el(
    "div",
    { class: checkbox ? "field checkbox" : "field", "data-field": name },
    checkbox ? [input, label] : [label, input],
    el("small", { id: hintId, class: "hint", text: hint }),
    el("p", { id: errorId, class: "field-error", "aria-live": "polite" }),
  );
  const focusTarget = input.matches("div") ? input.querySelector("input") : input;
  return { node, read, input: focusTarget, errors: node.querySelector(".field-error"), schema };
}

/** An image upload with its preview; read() gives the File. */
function uploadWidget(opName, name, description, onChange) {
  const id = nextId(`${opName}-${name}`);
  const errorId = `${id}-error`;
  const input = el("input", {
    id, name, type: "file", accept: "image/png,image/jpeg,image/webp", required: true,
    "aria-describedby": `${id}-hint ${errorId}`,
  });
  const preview = el("img", { class: "upload-preview", alt: "", hidden: true });
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (preview.src) URL.revokeObjectURL(preview.src);
    if (file) {
      preview.src = URL.createObjectURL(file);
      preview.alt = `the chosen ${name}: ${file.name}`;
      preview.hidden = !!onChange;
    } else {
      preview.hidden = true;
    }
    if (onChange) onChange(file);
  });
  const node = el(
    "div",
    { class: "field", "data-field": name },
    el("label", { for: id, text: `${labelOf(name)} *` }),
    input,
    el("small", { id: `${id}-hint`, class: "hint", text: description }),
    preview,
    el("p", { id: errorId, class: "field-error", "aria-live": "polite" }),
  );
  return { node, read: () => input.files[0] || null, input, errors: node.querySelector(".field-error") };
}

// ---- the mask editor (inpaint) ---------------------------------------------------------------------------

class MaskEditor {
  constructor(opName) {
    this.id = nextId(`${opName}-mask`);
    this.brush = 24;
    this.erasing = false;
    this.penDown = false;
    this.cursor = { x: 0.5, y: 0.5 };
    this.photo = el("canvas", { class: "mask-photo", "aria-hidden": "true" });
    this.mask = el("canvas", {
      class: "mask-paint", id: this.id, tabindex: 0, role: "application",
      "aria-roledescription": "mask painter",
      "aria-label": "Mask: paint with the mouse, or move with the arrow keys and press Space to put the brush down or lift it; E switches brush and eraser; [ and ] change its size",
      "aria-describedby": `${this.id}-hint ${this.id}-error`,
    });
    this.ring = el("div", { class: "mask-cursor", "aria-hidden": "true", hidden: true });
    this.stage = el("div", { class: "mask-stage", hidden: true }, this.photo, this.mask, this.ring);
    this.empty = el("p", { class: "mask-empty", text: "Choose a photo first, then paint the mask over it." });
    const sizeId = nextId("brush-size");
    this.sizeInput = el("input", { id: sizeId, type: "range", min: 2, max: 160, value: this.brush });
    this.sizeInput.addEventListener("input", () => { this.brush = Number(this.sizeInput.value); this.showCursor(); });
    this.brushButton = el("button", { type: "button", "aria-pressed": "true", text: "Brush", onclick: () => this.setEraser(false) });
    this.eraserButton = el("button", { type: "button", "aria-pressed": "false", text: "Eraser", onclick: () => this.setEraser(true) });
    const tools = el(
      "div", { class: "mask-tools", role: "group", "aria-label": "Mask tools" },
      this.brushButton, this.eraserButton,
      el("label", { for: sizeId, text: "Size" }), this.sizeInput,
      el("button", { type: "button", text: "Clear", onclick: () => this.clear() }),
      el("button", { type: "button", text: "Invert", onclick: () => this.invert() }),
    );
    this.node = el(
      "div", { class: "field mask-field", "data-field": "mask" },
      el("span", { class: "label", id: `${this.id}-label`, text: "Mask *" }),
      tools, this.empty, this.stage,
      el("small", { id: `${this.id}-hint`, class: "hint", text: "Red = generate new content there (sent as white in a black PNG of the photo's size)." }),
      el("p", { id: `${this.id}-error`, class: "field-error", "aria-live": "polite" }),
    );
    this.errors = this.node.querySelector(".field-error");
    this.input = this.mask;
    this.bind();
  }

  setEraser(on) {
    this.erasing = on;
    this.brushButton.setAttribute("aria-pressed", String(!on));
    this.eraserButton.setAttribute("aria-pressed", String(on));
  }

  async load(file) {
    if (!file) {
      this.stage.hidden = true;
      this.empty.hidden = false;
      return;
    }
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.src = url;
    await image.decode();
    for (const canvas of [this.photo, this.mask]) {
      canvas.width = image.naturalWidth;
      canvas.height = image.naturalHeight;
    }
    this.photo.getContext("2d").drawImage(image, 0, 0);
    URL.revokeObjectURL(url);
    this.clear();
    this.stage.hidden = false;
    this.empty.hidden = true;
  }

  /** Image pixels per CSS pixel of the shown canvas. */
  scale() {
    const rect = this.mask.getBoundingClientRect();
    return rect.width ? this.mask.width / rect.width : 1;
  }

  point(event) {
    const rect = this.mask.getBoundingClientRect();
    const s = this.scale();
    return { x: (event.clientX - rect.left) * s, y: (event.clientY - rect.top) * s };
  }

  stroke(from, to) {
    const ctx = this.mask.getContext("2d");
    ctx.save();
    ctx.globalCompositeOperation = this.erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "rgb(255, 0, 64)";
    ctx.lineWidth = this.brush * this.scale();
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    ctx.restore();
    this.errors.textContent = "";
  }

  bind() {
    let last = null;
    this.mask.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      this.mask.setPointerCapture(event.pointerId);
      last = this.point(event);
      this.stroke(last, last);
      event.preventDefault();
    });
    this.mask.addEventListener("pointermove", (event) => {
      if (!last) return;
      const p = this.point(event);
      this.stroke(last, p);
      last = p;
    });
    const end = () => { last = null; };
    this.mask.addEventListener("pointerup", end);
    this.mask.addEventListener("pointercancel", end);
    this.mask.addEventListener("focus", () => this.showCursor());
    this.mask.addEventListener("blur", () => { this.ring.hidden = true; this.penDown = false; });
    this.mask.addEventListener("keydown", (event) => this.key(event));
  }

  key(event) {
    const step = event.shiftKey ? 0.01 : 0.04;
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    const toPixels = (c) => ({ x: c.x * this.mask.width, y: c.y * this.mask.height });
    if (moves[event.key]) {
      const before = toPixels(this.cursor);
      this.cursor.x = Math.min(1, Math.max(0, this.cursor.x + moves[event.key][0]));
      this.cursor.y = Math.min(1, Math.max(0, this.cursor.y + moves[event.key][1]));
      if (this.penDown) this.stroke(before, toPixels(this.cursor));
    } else if (event.key === " " || event.key === "Enter") {
      this.penDown = !this.penDown;
      if (this.penDown) this.stroke(toPixels(this.cursor), toPixels(this.cursor));
    } else if (event.key === "e" || event.key === "E") {
      this.setEraser(!this.erasing);
    } else if (event.key === "[" || event.key === "]") {
      this.brush = Math.min(160, Math.max(2, this.brush + (event.key === "]" ? 4 : -4)));
      this.sizeInput.value = this.brush;
    } else {
      return;
    }
    event.preventDefault();
    this.showCursor();
  }

  showCursor() {
    if (document.activeElement !== this.mask) return;
    const rect = this.mask.getBoundingClientRect();
    this.ring.hidden = false;
    this.ring.style.width = this.ring.style.height = `${this.brush}px`;
    this.ring.style.left = `${this.cursor.x * rect.width - this.brush / 2}px`;
    this.ring.style.top = `${this.cursor.y * rect.height - this.brush / 2}px`;
    this.ring.classList.toggle("down", this.penDown);
  }

  clear() {
    this.mask.getContext("2d").clearRect(0, 0, this.mask.width, this.mask.height);
  }

  invert() {
    if (!this.mask.width) return;
    const ctx = this.mask.getContext("2d");
    const data = ctx.getImageData(0, 0, this.mask.width, this.mask.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const painted = px[i + 3] >= 128;
      px[i] = 255; px[i + 1] = 0; px[i + 2] = 64;
      px[i + 3] = painted ? 0 : 255;
    }
    ctx.putImageData(data, 0, 0);
  }

  /** The mask the API expects: a PNG of the photo's size, white where painted, black elsewhere. */
  async read() {
    if (!this.mask.width) return null;
    const source = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height).data;
    const out = new ImageData(this.mask.width, this.mask.height);
    let painted = 0;
    for (let i = 0; i < source.length; i += 4) {
      const v = source[i + 3] >= 128 ? 255 : 0;
      painted += v ? 1 : 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
      out.data[i + 3] = 255;
    }
    if (!painted) return null;
    const canvas = el("canvas");
    canvas.width = this.mask.width;
    canvas.height = this.mask.height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    return new Promise((done) => canvas.toBlob(done, "image/png"));
  }
}

// ---- anagram prompts -------------------------------------------------------------------------------------

class PromptViews {
  constructor(opName, fields) {
    this.opName = opName;
    const views = nonNull(fields.views.schema).schema;
    this.viewNames = resolve(views.items).enum;
    this.maxLength = resolve(fields.prompts.schema).items.maxLength;
    const defaults = resolve(fields.prompts.schema).examples?.[0] || ["", ""];
    this.rows = el("ol", { class: "prompt-rows" });
    this.errors = el("p", { class: "field-error", "aria-live": "polite" });
    this.node = el(
      "fieldset", { class: "field prompts", "data-field": "prompts" },
      el("legend", { text: "Prompts and their views *" }),
      el("small", { class: "hint", text: "Two or more prompts; the image shows prompt i when seen through view i." }),
      this.rows,
      el("button", { type: "button", text: "Add a prompt", onclick: () => this.add("", "identity", true) }),
      this.errors,
    );
    defaults.forEach((text, i) => this.add(text, i === 0 ? "identity" : "flip_vertical"));
    this.input = this.rows.querySelector("textarea");
  }

  add(text, view, focus = false) {
    const i = this.rows.children.length;
    const promptId = nextId(`${this.opName}-prompt`);
    const viewId = nextId(`${this.opName}-view`);
    const row = el(
      "li", { class: "prompt-row" },
      el("label", { for: promptId, text: `Prompt ${i + 1}` }),
      el("textarea", { id: promptId, rows: 2, maxlength: this.maxLength, required: true, "data-item": "prompts" }),
      el("label", { for: viewId, text: "seen" }),
      el("select", { id: viewId, "data-item": "views" }, this.viewNames.map((v) => el("option", { value: v, text: v.replace(/_/g, " ") }))),
      el("button", { type: "button", class: "remove", "aria-label": `Remove prompt ${i + 1}`, text: "Remove",
        onclick: () => this.remove(row) }),
      el("p", { class: "field-error", "aria-live": "polite" }),
    );
    row.querySelector("textarea").value = text;
    row.querySelector("select").value = view;
    this.rows.append(row);
    this.renumber();
    if (focus) row.querySelector("textarea").focus();
  }

  remove(row) {
    if (this.rows.children.length <= 2) {
      this.errors.textContent = "An anagram needs at least two prompts.";
      return;
    }
    row.remove();
    this.renumber();
    this.rows.querySelector("textarea").focus();
  }

  renumber() {
    [...this.rows.children].forEach((row, i) => {
      row.querySelector("label").textContent = `Prompt ${i + 1}`;
      row.querySelector(".remove").setAttribute("aria-label", `Remove prompt ${i + 1}`);
    });
  }

  values() {
    return [...this.rows.children].map((row) => ({
      prompt: row.querySelector("textarea").value,
      view: row.querySelector("select").value,
    }));
  }

  /** The error element and input of `prompts[i]` / `views[i]` (or of the whole list). */
  target(name) {
    const match = /^(prompts|views)\[(\d+)\]/.exec(name);
    const row = match ? this.rows.children[Number(match[2])] : null;
    if (!row) return { errors: this.errors, input: this.rows.querySelector("textarea") };
    const input = row.querySelector(match[1] === "views" ? "select" : "textarea");
    return { errors: row.querySelector(".field-error"), input };
  }
}

// ---- a panel per operation -------------------------------------------------------------------------------

class Panel {
  constructor(op, index) {
    this.op = op;
    this.name = op.name;
    this.fields = fieldsOf(op);
    this.widgets = {};
    this.job = null;
    this.tab = el("button", {
      role: "tab", id: `tab-${op.name}`, "aria-controls": `panel-${op.name}`, "aria-selected": "false",
      tabindex: -1, type: "button", text: LABELS[op.name] || op.summary,
    });
    this.node = el("section", {
      role: "tabpanel", id: `panel-${op.name}`, "aria-labelledby": `tab-${op.name}`, class: "panel", hidden: true,
      tabindex: 0,
    });
    this.build();
  }

  build() {
    const op = this.op;
    const form = el("form", { class: "op-form", novalidate: true, "aria-label": LABELS[op.name] || op.summary });
    form.addEventListener("submit", (event) => { event.preventDefault(); this.run(); });
    this.unavailable = el("p", { class: "notice unavailable", role: "status", hidden: true });
    const main = el("div", { class: "fields" });
    const options = el("div", { class: "fields" });
    // uploads (and the mask painter for inpaint)
    for (const upload of op.uploads) {
      if (upload.name === "mask") {
        this.mask = new MaskEditor(op.name);
        this.widgets.mask = this.mask;
        main.append(this.mask.node);
      } else {
        const onChange = op.name === "if_inpaint" ? (file) => this.mask.load(file) : null;
        this.widgets[upload.name] = uploadWidget(op.name, upload.name, upload.description, onChange);
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
      const overrides = name === "previews" ? { default: true } : {};
      if (DEFAULTS[op.name] && DEFAULTS[op.name][name] !== undefined) overrides.default = DEFAULTS[op.name][name];
      const w = widget(op.name, name, field, overrides);
      this.widgets[name] = w;
      (OPTION_FIELDS.includes(name) ? options : main).append(w.node);
    }
    this.submit = el("button", { type: "submit", class: "primary", text: "Run" });
    this.formError = el("div", { class: "problem", role: "alert", hidden: true });
    form.append(
      el("p", { class: "op-hint", text: HINTS[op.name] || op.summary }),
      this.unavailable,
      main,
      el("details", { class: "options", open: op.name === "mnist_sample" }, el("summary", { text: "Options" }), options),
      this.formError,
      el("div", { class: "row" }, this.submit),
    );
    this.output = el("div", { class: "output", "aria-live": "off" });
    this.node.append(el("h2", { text: LABELS[op.name] || op.summary }), el("div", { class: "panel-body" }, form, this.output));
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
        ? "also upscale to 256x256 with stage II"
        : `Unavailable: ${upscaleState.reason || "no live worker serves it"}.`;
    }
  }

  clearErrors() {
    this.formError.hidden = true;
    this.formError.replaceChildren();
    for (const node of this.node.querySelectorAll(".field-error")) node.textContent = "";
    for (const node of this.node.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  /** Show a problem+json answer: its detail on the form, each `errors` item next to its field. */
  showProblem(problem) {
    this.formError.hidden = false;
    this.formError.replaceChildren(
      el("strong", { text: problem.title ? `${problem.title}: ` : "Error: " }),
      document.createTextNode(problem.detail || "the request failed"),
    );
    let first = null;
    for (const error of problem.errors || []) {
      const name = String(error.name || "");
      const base = name.split(/[[.]/)[0];
      let target = this.widgets[base];
      if (this.prompts && (base === "prompts" || base === "views")) target = this.prompts.target(name);
      if (!target) continue;
      target.errors.textContent = error.reason || problem.detail;
      if (target.input) {
        target.input.setAttribute("aria-invalid", "true");
        first = first || target.input;
      }
    }
    (first || this.formError).focus?.();
  }

  async request() {
    const op = this.op;
    const missing = [];
    if (op.transport === "query") {
      const params = new URLSearchParams();
      for (const [name, w] of Object.entries(this.widgets)) {
        const value = w.read();
        if (value !== "" && value !== null) params.append(name, value);
      }
      return { url: `${op.path}?${params}`, init: { method: "POST" }, missing };
    }
    const form = new FormData();
    for (const [name, w] of Object.entries(this.widgets)) {
      if (name === "prompts") {
        for (const { prompt, view } of this.prompts.values()) {
          form.append("prompts", prompt);
          form.append("views", view);
        }
        continue;
      }
      const value = await w.read();
      if (value instanceof Blob) {
        form.append(name, value, value.name || `${name}.png`);
      } else if (value === null) {
        missing.push(name);
      } else if (value !== "") {
        form.append(name, value);
      }
    }
    return { url: op.path, init: { method: "POST", body: form }, missing };
  }

  async run() {
    this.clearErrors();
    const { url, init, missing } = await this.request();
    if (missing.length) {
      this.showProblem({
        title: "Missing",
        detail: missing.map((n) => (n === "mask" ? "paint the mask over the photo" : `choose the ${n}`)).join("; "),
        errors: missing.map((n) => ({ name: n, reason: n === "mask" ? "paint where new content should go" : "required" })),
      });
      return;
    }
    this.submit.disabled = true;
    try {
      const response = await api(url, init);
      if (response.status !== 202) {
        this.showProblem(await problemOf(response));
        return;
      }
      const job = await response.json();
      if (this.job) this.job.close();
      this.job = new JobView(this, job);
      this.output.replaceChildren(this.job.node);
      this.job.follow();
    } catch (error) {
      this.showProblem({ title: "Network error", detail: String(error.message || error) });
    } finally {
      this.submit.disabled = !this.unavailable.hidden;
    }
  }
}

// ---- one job: progress, previews, cancel, results ----------------------------------------------------------

class JobView {
  constructor(panel, job) {
    this.panel = panel;
    this.job = job;
    this.lastEventId = null;
    this.closed = false;
    this.done = false;
    this.urls = [];
    this.status = el("p", { class: "job-status", role: "status", "aria-live": "polite", "data-status": job.status });
    this.bar = el("progress", { class: "job-progress", max: 1, value: 0, "aria-label": "progress" });
    this.barText = el("span", { class: "progress-text", text: "" });
    this.cancelButton = el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => this.cancel() });
    this.preview = el("img", { class: "live-preview pixelated", alt: "live preview of the estimate", hidden: true });
    this.previewCaption = el("figcaption", { text: "" });
    this.gallery = el("div", { class: "gallery" });
    this.node = el(
      "article", { class: "job", "aria-label": `job ${job.id}` },
      el("h3", { text: "Job " }, el("code", { text: job.id.slice(0, 8) })),
      this.status,
      el("div", { class: "progress-row" }, this.bar, this.barText, this.cancelButton),
      el("figure", { class: "preview-figure" }, this.preview, this.previewCaption),
      this.gallery,
    );
    this.setStatus(job.status, job.queue_position);
  }

  setStatus(status, position) {
    this.status.dataset.status = status;
    const words = {
      queued: position === null || position === undefined ? "Queued" : `Queued (position ${position + 1})`,
      running: "Running",
      succeeded: "Succeeded",
      failed: "Failed",
      canceled: "Canceled",
    };
    this.status.textContent = words[status] || status;
    const finished = ["succeeded", "failed", "canceled"].includes(status);
    this.cancelButton.disabled = finished;
    this.cancelButton.hidden = finished;
  }

  setProgress(p) {
    this.bar.max = p.total;
    this.bar.value = p.step;
    this.bar.setAttribute("aria-valuetext", `${p.step} of ${p.total}`);
    this.barText.textContent = `${p.stage ? `stage ${p.stage}: ` : ""}${p.step} / ${p.total}`;
  }

  async showPreview(data) {
    try {
      const url = await blobUrl(data.url);
      if (this.closed) return URL.revokeObjectURL(url);
      this.urls.push(url);
      this.preview.src = url;
      this.preview.hidden = false;
      this.preview.dataset.step = data.step;
      this.previewCaption.textContent = `estimate at step ${data.step} of ${data.total}${data.stage ? ` (stage ${data.stage})` : ""}`;
    } catch {
      /* a preview is best effort */
    }
  }

  async cancel() {
    this.cancelButton.disabled = true;
    const response = await api(`/jobs/${this.job.id}/cancel`, { method: "POST" });
    if (response.status !== 202 && response.status !== 409) {
      this.panel.showProblem(await problemOf(response));
      this.cancelButton.disabled = false;
    }
  }

  close() {
    this.closed = true;
    if (this.abort) this.abort.abort();
    for (const url of this.urls) URL.revokeObjectURL(url);
  }

  /** Read the event stream until the terminal event, reconnecting with Last-Event-ID. */
  async follow() {
    let failures = 0;
    while (!this.closed && !this.done) {
      this.abort = new AbortController();
      try {
        const extra = this.lastEventId ? { "Last-Event-ID": this.lastEventId } : {};
        const response = await api(`/jobs/${this.job.id}/events`, {
          headers: { Accept: "text/event-stream", ...extra }, signal: this.abort.signal,
        });
        if (!response.ok) {
          this.panel.showProblem(await problemOf(response));
          if (response.status < 500) return;
        } else {
          failures = 0;
          await this.read(response.body);
        }
      } catch (error) {
        if (this.closed) return;
      }
      if (!this.done) {
        failures += 1;
        await new Promise((r) => setTimeout(r, Math.min(500 * failures, 5000)));
      }
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(buffer.slice(cut).match(/^\r?\n\r?\n/)[0].length + cut);
        this.dispatch(block);
      }
    }
  }

  dispatch(block) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (!data.length) return;
    if (id) this.lastEventId = id;
    const payload = JSON.parse(data.join("\n"));
    if (event === "queue") this.setStatus("queued", payload.position);
    else if (event === "status") this.setStatus(payload.status);
    else if (event === "progress") { this.setStatus("running"); this.setProgress(payload); }
    else if (event === "preview") this.showPreview(payload);
    else if (event === "done") this.finish(payload);
  }

  async finish(job) {
    this.done = true;
    this.job = job;
    this.setStatus(job.status);
    if (job.progress) this.setProgress(job.progress);
    if (job.status === "failed") {
      this.gallery.replaceChildren(el("p", { class: "problem", role: "alert", text: `The job failed: ${job.error}` }));
      return;
    }
    if (job.status === "canceled") return;
    this.bar.value = this.bar.max;
    await this.showResults(job);
  }

  async figure(name, { caption = name, big = false, small = false } = {}) {
    const path = this.job.results[name];
    if (!path) return null;
    const url = await blobUrl(path);
    this.urls.push(url);
    const img = el("img", { src: url, alt: caption, class: `result pixelated${big ? " big" : ""}${small ? " small" : ""}`, "data-name": name });
    return el("figure", { class: "result-figure" }, img, el("figcaption", {}, caption, " ",
      el("a", { href: url, download: `${this.job.id.slice(0, 8)}-${name}`, text: "download" })));
  }

  async showResults(job) {
    const kind = this.panel.name;
    const files = Object.keys(job.results);
    // the main file: the stage-II upscale (result_<size>.png) when there is one, else the stage-I or MNIST result
    const main = files.find((f) => /^result_\d+\.png$/.test(f)) || files.find((f) => f === "result.png" || f === "samples.png");
    const shown = new Set(["manifest.json"]);
    const row = async (names, cls = "compare") => {
      const figures = [];
      for (const [name, options] of names) {
        if (!files.includes(name)) continue;
        shown.add(name);
        figures.push(await this.figure(name, options));
      }
      if (figures.length) this.gallery.append(el("div", { class: cls }, figures));
    };
    if (kind === "if_sdedit" || kind === "if_inpaint") {
      await row([["input.png", { caption: "input (as used)" }], ...(kind === "if_inpaint" ? [["mask.png", { caption: "mask (as used)" }]] : []), [main, { caption: `output: ${main}`, big: true }]]);
    } else if (kind === "if_denoise") {
      await row([["input.png", { caption: "input" }], ["noisy.png", { caption: `noisy (t = ${job.params.t})` }], ["result.png", { caption: `denoised (${job.params.method.replace("_", " ")})`, big: true }]]);
    } else if (kind === "if_anagram") {
      const views = files.filter((f) => f.startsWith("view_")).sort();
      await row(views.map((name, i) => [name, { caption: `view ${i + 1} (${name.replace(/^view_\d+_|\.png$/g, "").replace(/_/g, " ")}): ${job.params.prompts[i]}`, big: true }]));
    } else if (kind === "if_hybrid") {
      shown.add(main);
      const near = await this.figure(main, { caption: `near: ${job.params.prompt_high}`, big: true });
      const far = await this.figure(main, { caption: `from afar: ${job.params.prompt_low}`, small: true });
      this.gallery.append(el("div", { class: "compare" }, near, far));
      await row([["low_frequency.png", { caption: "low frequencies (what you see from afar)" }]]);
    } else {
      await row([[main, { caption: main, big: true }]]);
    }
    await row(files.filter((f) => !shown.has(f)).map((name) => [name, { caption: name }]), "thumbs");
    if (job.results["manifest.json"]) {
      const response = await api(job.results["manifest.json"]);
      const text = JSON.stringify(await response.json(), null, 2);
      const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
      this.urls.push(url);
      this.gallery.append(el("details", { class: "manifest" },
        el("summary", { text: "manifest.json" }),
        el("pre", { text }),
        el("a", { href: url, download: `${job.id.slice(0, 8)}-manifest.json`, text: "download manifest.json" })));
    }
  }
}

// ---- tabs, readiness, start ------------------------------------------------------------------------------

function select(panel, focus = true) {
  for (const other of Object.values(state.panels)) {
    const on = other === panel;
    other.tab.setAttribute("aria-selected", String(on));
    other.tab.tabIndex = on ? 0 : -1;
    other.node.hidden = !on;
  }
  if (focus) panel.tab.focus();
  history.replaceState(null, "", `#${panel.name}`);
}

function buildTabs() {
  const tabs = document.getElementById("tabs");
  const main = document.getElementById("panels");
  const panels = state.config.operations.map((op, i) => new Panel(op, i));
  for (const panel of panels) {
    state.panels[panel.name] = panel;
    tabs.append(panel.tab);
    main.append(panel.node);
    panel.tab.addEventListener("click", () => select(panel));
  }
  tabs.addEventListener("keydown", (event) => {
    const i = panels.findIndex((p) => p.tab === document.activeElement);
    if (i < 0) return;
    const moves = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: panels.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    select(panels[(moves[event.key] + panels.length) % panels.length]);
  });
  const wanted = state.panels[location.hash.slice(1)] || panels[0];
  select(wanted, false);
}

async function refreshReadiness() {
  const line = document.getElementById("service-state");
  try {
    const response = await fetch("/readyz");
    const body = await response.json();
    state.ready = body;
    const states = body.operation_states || {};
    for (const panel of Object.values(state.panels)) {
      const opState = Object.keys(states).length ? states[panel.name] : { available: false, reason: body.detail || "no live worker" };
      panel.setAvailability(opState, states.if_upscale);
    }
    const workers = (body.workers || []).length;
    line.textContent = body.redis === false
      ? `The job queue is unreachable: ${body.detail || ""}`
      : `${workers} live worker${workers === 1 ? "" : "s"}, ${body.queue_depth ?? 0} queued`;
    line.dataset.ready = String(!!body.ready);
  } catch (error) {
    line.textContent = "The service does not answer.";
  }
}

async function start() {
  const [config, spec] = await Promise.all([
    fetch("/studio/config.json").then((r) => r.json()),
    fetch("/openapi.json").then((r) => r.json()),
  ]);
  state.config = config;
  state.spec = spec;
  setUpKeyDialog();
  buildTabs();
  await refreshReadiness();
  setInterval(refreshReadiness, 10000);
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  document.getElementById("service-state").textContent = `The studio could not start: ${error.message || error}`;
});
