/* "Copy as curl": one bash command line that submits the same request, and the box that shows it. */

import { absolute, state } from "./api.js";
import { el, nextId } from "./dom.js";

/** `text` as one bash word: bare when safe, '...' otherwise, $'...' when it holds control characters. */
export function shellWord(text) {
  const s = String(text);
  if (/^[\w@%+=:,./-]+$/.test(s)) return s;
  if (/[\x00-\x1f\x7f]/.test(s)) {
    const escaped = s.replace(/[\\']/g, (c) => `\\${c}`).replace(/[\x00-\x1f\x7f]/g, (c) => {
      const named = { "\n": "\\n", "\r": "\\r", "\t": "\\t" }[c];
      return named || `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`;
    });
    return `$'${escaped}'`;
  }
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The command for operation `op` with these [name, text] parameters and upload names. Text fields go as
 * --form-string (curl -F would read a value starting with @ or < as a file); each upload as
 * `-F name=@name.png`, a file to save next to where the command runs. `Prefer: wait=60` makes it one request
 * for a whole job: it prints the finished job (with its result URLs), or the queued one after 60 s. */
export function curlCommand(op, params, uploads = []) {
  const url = new URL(absolute(op.path));
  const words = ["curl", "-sS", "-X", "POST"];
  if (op.transport === "query") {
    for (const [name, text] of params) url.searchParams.append(name, text);
    words.push(shellWord(url.href));
  } else {
    words.push(shellWord(url.href));
    for (const [name, text] of params) words.push("--form-string", shellWord(`${name}=${text}`));
    for (const name of uploads) words.push("-F", shellWord(`${name}=@${name}.png`));
  }
  words.push("-H", shellWord("Prefer: wait=60"));
  if (state.apiKey) words.push("-H", shellWord(`X-API-Key: ${state.apiKey}`));
  return words.join(" ");
}

/** A job's recorded parameters as [name, text] pairs: lists repeat their field, nulls are left out. */
export function paramsOf(params) {
  const out = [];
  for (const [name, value] of Object.entries(params || {})) {
    if (value === null || value === undefined) continue;
    for (const item of Array.isArray(value) ? value : [value]) out.push([name, String(item)]);
  }
  return out;
}

/** A box with the command, selected, copied to the clipboard where the browser allows it. `files` are
 * [name, Blob | null] uploads the command reads: a download link for each Blob, a note for each. */
export function showCommand(box, command, files = []) {
  const id = nextId("curl");
  const area = el("textarea", { id, class: "curl-command", readonly: true, rows: 3, spellcheck: "false" });
  area.value = command;
  const said = el("p", { class: "curl-status", role: "status" });
  const notes = files.length
    ? el("p", { class: "hint" }, "Save the upload", files.length > 1 ? "s" : "", " first, in the folder where you run it: ",
      files.map(([name, blob], i) => [
        i ? ", " : "",
        blob ? el("a", { href: URL.createObjectURL(blob), download: `${name}.png`, text: `${name}.png` }) : el("code", { text: `${name}.png` }),
      ]), ".")
    : null;
  for (const url of box.urls || []) URL.revokeObjectURL(url);
  box.urls = [...notes?.querySelectorAll("a") || []].map((a) => a.href);
  const close = () => {
    box.hidden = true;
    box.replaceChildren();
    for (const url of box.urls) URL.revokeObjectURL(url);
    box.urls = [];
  };
  box.replaceChildren(
    ...[el("label", { for: id, text: "curl (bash)" }), area, notes, said, el("button", { type: "button", text: "Close", onclick: close })]
      .filter(Boolean),
  );
  box.hidden = false;
  area.focus();
  area.select();
  const fallback = () => { said.textContent = "Select the command and copy it (Ctrl+C)."; };
  if (navigator.clipboard?.writeText) {
    navigator.clipboard.writeText(command).then(() => { said.textContent = "Copied to the clipboard."; }, fallback);
  } else {
    fallback();
  }
}
