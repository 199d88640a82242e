/* The inpaint mask editor: the photo on a canvas with a paint layer over it (mouse, touch, or the keyboard:
 * arrows move the brush, Space puts it down or lifts it, E toggles the eraser, [ and ] resize it). It sends
 * the mask the API expects: a PNG of the photo's size, white where painted, black elsewhere. */

import { el, nextId } from "./dom.js";

export class MaskEditor {
  constructor(opName) {
    this.name = "mask";
    this.upload = true;
    this.id = nextId(`${opName}-mask`);
    this.brush = 24;
    this.erasing = false;
    this.penDown = false;
    this.cursor = { x: 0.5, y: 0.5 };
    // 0x0 until a photo is chosen (a canvas is 300x150 by default)
    this.photo = el("canvas", { class: "mask-photo", "aria-hidden": "true", width: 0, height: 0 });
    this.mask = el("canvas", {
      width: 0, height: 0,
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

  /** Show the decoded photo (an ImageBitmap), or nothing when there is none or it could not be read. */
  load(bitmap) {
    this.clear();
    if (!bitmap) {
      for (const canvas of [this.photo, this.mask]) canvas.width = canvas.height = 0;
      this.stage.hidden = true;
      this.empty.hidden = false;
      return;
    }
    for (const canvas of [this.photo, this.mask]) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    this.photo.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    this.errors.textContent = "";
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

  /** The mask the API expects: {file} (a PNG of the photo's size, white where painted, black elsewhere), or
   * {error} when there is no photo or nothing is painted. */
  async read() {
    if (!this.mask.width) return { error: "Choose a photo above first, then paint the mask over it." };
    const source = this.mask.getContext("2d").getImageData(0, 0, this.mask.width, this.mask.height).data;
    const out = new ImageData(this.mask.width, this.mask.height);
    let painted = 0;
    for (let i = 0; i < source.length; i += 4) {
      const v = source[i + 3] >= 128 ? 255 : 0;
      painted += v ? 1 : 0;
      out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
      out.data[i + 3] = 255;
    }
    if (!painted) return { error: "Paint where new content should go (in red) over the photo." };
    const canvas = el("canvas");
    canvas.width = this.mask.width;
    canvas.height = this.mask.height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    const blob = await new Promise((done) => canvas.toBlob(done, "image/png"));
    return { file: new File([blob], "mask.png", { type: "image/png" }) };
  }
}
