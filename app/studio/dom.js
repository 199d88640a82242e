/* Small DOM helpers shared by the studio's modules. */

/** An element with attributes (`class`, `text`, `on<event>` handlers, others as attributes) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

let uid = 0;
/** A fresh element id with a readable prefix. */
export const nextId = (prefix) => `${prefix}-${++uid}`;

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** "14:03:22" today, "12 Mar, 14:03" on another day. */
export function clock(when) {
  const date = new Date(when);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
}

/** Put `file` into an `<input type=file>` and tell its listeners, as if the user had chosen it. */
export function putFile(input, file) {
  const transfer = new DataTransfer();
  transfer.items.add(file);
  input.files = transfer.files;
  input.dispatchEvent(new Event("change", { bubbles: true }));
}

/** The first image file of a drop or paste, if any. */
export function imageFileOf(transfer) {
  if (!transfer) return null;
  return [...(transfer.files || [])].find((f) => f.type.startsWith("image/")) || null;
}

/** Whether a drag carries files (types are readable during dragover, the files themselves are not). */
export const dragsFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
