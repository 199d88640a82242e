/* The inputs of a form, one per schema field, and the image uploads. Every widget has the same shape:
 *   node, input (the focus target), errors (its message element), name, default,
 *   read() -> {text} (the value to send, null for none) or {error} (a message for people),
 *   set(value) (from a job's recorded request), isDefault(text). */

import { dragsFiles, el, imageFileOf, nextId, putFile } from "./dom.js";
import { checkNumber, checkText, hintOf, labelOf, nonNull, resolve } from "./schema.js";

const SLIDERS = new Set(["i_start", "t"]);

/** Whether `text` (what the form would send) equals the schema's default `def`. */
function equalsDefault(text, def, type) {
  if (def === undefined || def === null) return text === null;
  if (text === null) return false;
  if (type === "number" || type === "integer") return Number(text) === def;
  return text === String(def);
}

/** One labelled input for a schema field. */
export function widget(opName, name, field, config) {
  const { schema, nullable } = nonNull(field.schema);
  const id = nextId(`${opName}-${name}`);
  const errorId = `${id}-error`;
  const hintId = `${id}-hint`;
  const common = { id, name, "aria-describedby": `${hintId} ${errorId}` };
  const def = schema.default;
  const type = schema.type;
  let input; // the element that holds the value
  let node; // what the label and hint sit around
  let read;
  let set;
  let picked = false; // chosen from a list: no range to state
  if (type === "boolean") {
    input = node = el("input", { ...common, type: "checkbox" });
    read = () => ({ text: input.checked ? "true" : "false" });
    set = (v) => { input.checked = v === true || v === "true"; };
  } else if (schema.enum && !(type === "integer" && schema.enum.length > 12)) {
    input = node = el("select", common, schema.enum.map((v) => el("option", { value: v, text: String(v).replace(/_/g, " ") })));
    read = () => ({ text: input.value });
    set = (v) => { input.value = v === null || v === undefined ? String(schema.enum[0]) : String(v); };
  } else if (type === "integer" && nullable && schema.maximum !== undefined && schema.maximum - (schema.minimum || 0) <= 12) {
    picked = true;
    const options = [el("option", { value: "", text: "none (unguided)" })];
    for (let v = schema.minimum || 0; v <= schema.maximum; v++) options.push(el("option", { value: v, text: String(v) }));
    input = node = el("select", common, options);
    read = () => ({ text: input.value === "" ? null : input.value });
    set = (v) => { input.value = v === null || v === undefined ? "" : String(v); };
  } else if ((type === "integer" || type === "number") && SLIDERS.has(name)) {
    const output = el("output", { for: id, class: "slider-value" });
    input = el("input", { ...common, type: "range", min: schema.minimum, max: schema.maximum, step: 1 });
    input.addEventListener("input", () => { output.textContent = input.value; });
    node = el("div", { class: "slider" }, input, output);
    read = () => ({ text: input.value });
    set = (v) => { input.value = String(v ?? def); output.textContent = input.value; };
  } else if (type === "integer" || type === "number") {
    const attrs = { ...common, type: "number", inputmode: type === "integer" ? "numeric" : "decimal" };
    if (schema.minimum !== undefined) attrs.min = schema.minimum;
    if (schema.exclusiveMinimum !== undefined) attrs.min = schema.exclusiveMinimum;
    if (schema.maximum !== undefined && schema.maximum < 1e15) attrs.max = schema.maximum;
    attrs.step = type === "integer" ? (schema.enum ? 2 : 1) : "any";
    if (nullable) attrs.placeholder = name === "seed" ? "random" : "the service chooses";
    input = node = el("input", attrs);
    read = () => checkNumber(input, schema, field.required);
    set = (v) => { input.value = v === null || v === undefined ? "" : String(v); };
  } else {
    const prompt = name.startsWith("prompt");
    const attrs = { ...common, autocomplete: "off", spellcheck: "true" };
    if (schema.maxLength) attrs.maxlength = schema.maxLength;
    if (field.required) attrs.required = true;
    if (schema.examples?.length) attrs.placeholder = `for example: ${schema.examples[0]}`;
    input = node = prompt ? el("textarea", { ...attrs, rows: 2 }) : el("input", { ...attrs, type: "text" });
    read = () => checkText(name, input.value, schema, field.required, nullable);
    set = (v) => { input.value = v === null || v === undefined ? "" : String(v); };
  }
  set(def);
  const checkbox = type === "boolean";
  const label = el("label", { for: id, text: labelOf(name) + (field.required ? " *" : "") });
  const wrapper = el(
    "div",
    { class: checkbox ? "field checkbox" : "field", "data-field": name },
    checkbox ? [node, label] : [label, node],
    el("small", { id: hintId, class: "hint", text: hintOf(name, schema, config, { picked }) }),
    el("p", { id: errorId, class: "field-error", "aria-live": "polite" }),
  );
  return {
    name,
    node: wrapper,
    input,
    errors: wrapper.querySelector(".field-error"),
    schema,
    default: def,
    read,
    set,
    reset: () => set(def),
    isDefault: (text) => equalsDefault(text, def, type),
  };
}

/** Decode an image file in the browser: its ImageBitmap, or null when it is not an image it can read. */
async function decode(file) {
  try {
    return await createImageBitmap(file);
  } catch {
    return null;
  }
}

/** An image upload with its preview, drag-and-drop onto the field and a clear message when the file is not
 * an image. `onImage(bitmap | null)` hears about every change (the mask editor draws the photo from it). */
export function uploadWidget(opName, name, description, onImage = null) {
  const id = nextId(`${opName}-${name}`);
  const errorId = `${id}-error`;
  const input = el("input", {
    id, name, type: "file", accept: "image/png,image/jpeg,image/webp", required: true,
    "aria-describedby": `${id}-hint ${errorId}`,
  });
  const preview = el("img", { class: "upload-preview", alt: "", hidden: true });
  const errors = el("p", { id: errorId, class: "field-error", "aria-live": "polite" });
  const node = el(
    "div",
    { class: "field upload", "data-field": name },
    el("label", { for: id, text: `${labelOf(name)} *` }),
    input,
    el("small", { id: `${id}-hint`, class: "hint", text: `${description}. Drop or paste an image here too.` }),
    preview,
    errors,
  );
  let file = null;
  let generation = 0;
  const show = (chosen, bitmap) => {
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.removeAttribute("src");
    preview.hidden = true;
    file = chosen && bitmap ? chosen : null;
    if (file && !onImage) {
      preview.src = URL.createObjectURL(file);
      preview.alt = `the chosen ${name}: ${file.name}`;
      preview.hidden = false;
    }
    if (onImage) onImage(bitmap);
    else if (bitmap) bitmap.close();
  };
  input.addEventListener("change", async () => {
    const chosen = input.files[0] || null;
    const mine = ++generation;
    errors.textContent = "";
    input.removeAttribute("aria-invalid");
    if (!chosen) return show(null, null);
    const bitmap = await decode(chosen);
    if (mine !== generation) return bitmap?.close();
    if (!bitmap) {
      input.value = ""; // nothing that cannot be sent stays chosen
      input.setAttribute("aria-invalid", "true");
      errors.textContent = `“${chosen.name}” is not an image this browser can read. Choose a PNG, JPEG or WebP file.`;
    }
    show(chosen, bitmap);
  });
  const w = {
    name,
    node,
    input,
    errors,
    upload: true,
    read: () => (file ? { file } : { error: `Choose an image (PNG, JPEG or WebP), or drop or paste one here.` }),
    /** Take a file as if the user had chosen it (drop, paste, "Send to"). */
    take: (chosen) => putFile(input, chosen),
  };
  node.addEventListener("dragover", (event) => {
    if (!dragsFiles(event)) return;
    event.preventDefault();
    node.classList.add("dropping");
  });
  node.addEventListener("dragleave", () => node.classList.remove("dropping"));
  node.addEventListener("drop", (event) => {
    event.preventDefault(); // taken here: the form and the page leave it alone
    node.classList.remove("dropping");
    const dropped = imageFileOf(event.dataTransfer) || event.dataTransfer?.files?.[0];
    if (dropped) w.take(dropped);
  });
  return w;
}

/** The `items` enum and length limit of an array field (the anagram's prompts and views). */
export function itemsOf(field) {
  return resolve(nonNull(field.schema).schema.items);
}
