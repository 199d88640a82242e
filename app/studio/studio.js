/* The studio: one panel per operation of the service, built from /openapi.json (fields, defaults, limits),
 * /studio/config.json (operations, whether an API key is needed) and /readyz (which operations a live worker
 * serves, the queue), and a history of the jobs run from this browser. No build step, no library, no
 * request to any other host.
 *
 * Modules: api.js (state, requests, API key), schema.js (fields, defaults, checks, wording), fields.js
 * (inputs), mask.js (mask painter), prompts.js (anagram prompts), panel.js (a form), jobs.js (a job's card),
 * history.js (the rail and the queue view), curl.js (copy as curl), dom.js (helpers). */

import { setUpKeyDialog, state } from "./api.js";
import { dragsFiles, imageFileOf } from "./dom.js";
import { History, renderQueue } from "./history.js";
import { Panel } from "./panel.js";

const READY_EVERY_MS = 10000;
const READY_EVERY_BUSY_MS = 3000; // while this browser has jobs queued or running

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
  const forms = document.getElementById("forms");
  const panels = state.config.operations.map((op) => new Panel(op));
  for (const panel of panels) {
    state.panels[panel.name] = panel;
    tabs.append(panel.tab);
    forms.append(panel.node);
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
  select(state.panels[location.hash.slice(1)] || panels[0], false);
}

const shown = () => Object.values(state.panels).find((p) => !p.node.hidden);

/** A pasted image goes to the image input of the panel on show (text pastes are left alone). A file dropped
 * where no form takes it goes there too, and never replaces the page (the browser's default for a drop). */
function listenForImages() {
  document.addEventListener("paste", (event) => {
    const file = imageFileOf(event.clipboardData);
    const panel = shown();
    if (!file || !panel?.widgets.image) return;
    event.preventDefault();
    panel.receive(file, `The pasted ${file.name ? `“${file.name}”` : "image"}`);
  });
  document.addEventListener("dragover", (event) => { if (dragsFiles(event)) event.preventDefault(); });
  document.addEventListener("drop", (event) => {
    if (event.defaultPrevented || !dragsFiles(event)) return;
    event.preventDefault();
    const file = imageFileOf(event.dataTransfer);
    const panel = shown();
    if (file && panel?.widgets.image) panel.receive(file, `The dropped “${file.name}”`);
  });
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
      : `${workers} live worker${workers === 1 ? "" : "s"}`;
    line.dataset.ready = String(!!body.ready);
  } catch {
    state.ready = null;
    line.textContent = "The service does not answer.";
    line.dataset.ready = "false";
  }
  renderQueue();
}

function pollReadiness() {
  const busy = state.history.ordered().some((card) => card.status === "queued" || card.status === "running");
  setTimeout(async () => {
    await refreshReadiness();
    pollReadiness();
  }, busy ? READY_EVERY_BUSY_MS : READY_EVERY_MS);
}

async function start() {
  const [config, spec] = await Promise.all([
    fetch("/studio/config.json").then((r) => r.json()),
    fetch("/openapi.json").then((r) => r.json()),
  ]);
  state.config = config;
  state.spec = spec;
  state.select = select;
  const keyKnown = setUpKeyDialog();
  buildTabs();
  listenForImages();
  state.history = new History();
  state.history.onChange = renderQueue;
  await refreshReadiness();
  if (state.config.api_key_required && !state.apiKey) document.body.dataset.ready = "true"; // the key dialog is up
  await keyKnown;
  state.history.load();
  pollReadiness();
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  document.getElementById("service-state").textContent = `The studio could not start: ${error.message || error}`;
});
