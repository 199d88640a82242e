/* The anagram's list of prompts, each with the view that shows it (the API's repeated `prompts` and `views`). */

import { el, nextId } from "./dom.js";
import { checkText } from "./schema.js";
import { itemsOf } from "./fields.js";

/** The views the API uses for two prompts when the request names none (the `views` field's description). */
const TWO_VIEWS = ["identity", "flip_vertical"];

export class PromptViews {
  constructor(opName, fields) {
    this.name = "prompts";
    this.opName = opName;
    this.viewNames = itemsOf(fields.views).enum;
    this.item = itemsOf(fields.prompts);
    this.examples = fields.prompts.schema.examples?.[0] || [];
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
    this.reset();
  }

  get input() {
    return this.rows.querySelector("textarea");
  }

  reset() {
    this.set(["", ""], TWO_VIEWS);
  }

  /** Rows for these prompts and views (a job's recorded request). */
  set(prompts, views) {
    this.rows.replaceChildren();
    const list = prompts && prompts.length ? prompts : ["", ""];
    list.forEach((text, i) => this.add(text, views?.[i] || (i < 2 ? TWO_VIEWS[i] : "identity")));
  }

  add(text, view, focus = false) {
    const i = this.rows.children.length;
    const promptId = nextId(`${this.opName}-prompt`);
    const viewId = nextId(`${this.opName}-view`);
    const example = this.examples[i];
    const row = el(
      "li", { class: "prompt-row" },
      el("label", { for: promptId, text: `Prompt ${i + 1}` }),
      el("textarea", {
        id: promptId, rows: 2, maxlength: this.item.maxLength, required: true, "data-item": "prompts",
        placeholder: example ? `for example: ${example}` : null,
      }),
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

  /** {items: [{prompt, view}]} or {error} (each blank or long prompt gets its message on its row). */
  read() {
    const items = [];
    let first = null;
    for (const row of this.rows.children) {
      const area = row.querySelector("textarea");
      const { text, error } = checkText("prompt", area.value, this.item, true);
      if (error) {
        row.querySelector(".field-error").textContent = error;
        area.setAttribute("aria-invalid", "true");
        first = first || { error, input: area };
      }
      items.push({ prompt: text, view: row.querySelector("select").value });
    }
    return first ? { ...first, handled: true } : { items };
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
