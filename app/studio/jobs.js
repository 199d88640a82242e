/* One job's card in the history: status, progress, live preview, Cancel, and once it is done its results,
 * seed, "Reuse seed", "Reuse settings", "Send to" and "Copy as curl".
 *
 * A card follows GET /jobs/{id}/events, read with fetch() so that the X-API-Key header can be sent (an
 * EventSource cannot send headers). When the stream drops it says so, and reconnects with Last-Event-ID
 * until the service answers again. Browsers open at most six connections to one host, so at most
 * MAX_STREAMS cards hold a stream at once; the others poll GET /jobs/{id} until a stream is free. */

import { api, fetchBlob, local, problemOf, state, streamed } from "./api.js";
import { clock, el, nextId, sleep } from "./dom.js";
import { curlCommand, paramsOf, showCommand } from "./curl.js";
import { operationLabel } from "./schema.js";

const MAX_STREAMS = 3;
const POLL_MS = 2000;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
/** No longer on the service: a job that expired (410) or that it never had (404). Not errors. */
const GONE = new Set(["expired", "missing"]);

export const isActive = (status) => status === "queued" || status === "running";
export const isOver = (status) => TERMINAL.has(status) || GONE.has(status);
/** Expired or unknown to the service: nothing more to ask it. */
export const isGone = (status) => GONE.has(status);

/** A counting semaphore whose waiters can withdraw. */
class Slots {
  constructor(size) {
    this.free = size;
    this.waiting = [];
  }

  take() {
    let grant;
    const ticket = { granted: false, ready: new Promise((done) => { grant = done; }) };
    ticket.grant = () => { ticket.granted = true; grant(); };
    if (this.free > 0) {
      this.free -= 1;
      ticket.grant();
    } else {
      this.waiting.push(ticket);
    }
    return ticket;
  }

  give(ticket) {
    if (!ticket.granted) {
      this.waiting = this.waiting.filter((t) => t !== ticket);
      return;
    }
    const next = this.waiting.shift();
    if (next) next.grant();
    else this.free += 1;
  }
}

const STREAMS = new Slots(MAX_STREAMS);

const STATUS_WORDS = {
  checking: "Checking…",
  queued: "Queued",
  running: "Running",
  succeeded: "Succeeded",
  failed: "Failed",
  canceled: "Canceled",
  expired: "Expired: the service has deleted this job and its results",
  missing: "Not found: the service has no record of this job",
};

export class JobCard {
  /** `entry`: what the history keeps of a job ({id, kind, at, status, params}). */
  constructor(history, entry, { expanded = false } = {}) {
    this.history = history;
    this.id = entry.id;
    this.kind = entry.kind;
    this.at = entry.at;
    this.params = entry.params || null;
    this.status = entry.status || "checking";
    this.job = null; // the last job body the service sent
    this.lastEventId = null;
    this.finished = false;
    this.closed = false;
    this.following = false;
    this.rendered = false;
    this.urls = [];
    this.blobs = {};
    this.pendingPreview = null;
    this.previewBusy = false;
    this.build(expanded);
    this.setStatus(isOver(this.status) || isActive(this.status) ? this.status : "checking");
  }

  /** What the history stores. */
  entry() {
    return { id: this.id, kind: this.kind, at: this.at, status: this.status, params: this.params };
  }

  build(expanded) {
    const short = this.id.slice(0, 8);
    const headingId = nextId("job-title");
    this.bodyId = nextId("job-body");
    this.thumb = el("img", { class: "thumb pixelated", alt: "", hidden: true });
    this.statusLine = el("span", { class: "job-status", role: "status", "aria-live": "polite" });
    this.toggle = el("button", {
      type: "button", class: "toggle", "aria-controls": this.bodyId, "aria-label": `Details of job ${short}`,
      text: "Details", onclick: () => this.setExpanded(this.body.hidden),
    });
    this.removeButton = el("button", {
      type: "button", class: "remove", "aria-label": `Remove job ${short} from the history`, text: "Remove",
      onclick: () => this.history.remove(this),
    });
    this.bar = el("progress", { class: "job-progress", max: 1, value: 0, "aria-label": `progress of job ${short}` });
    this.barText = el("span", { class: "progress-text" });
    this.cancelButton = el("button", { type: "button", class: "cancel", text: "Cancel", onclick: () => this.cancel() });
    this.progressRow = el("div", { class: "progress-row" }, this.bar, this.barText, this.cancelButton);
    this.connection = el("p", { class: "job-conn", role: "status", hidden: true });
    this.preview = el("img", { class: "live-preview pixelated", alt: "live preview of the estimate" });
    this.previewCaption = el("figcaption");
    this.previewFigure = el("figure", { class: "preview-figure", hidden: true }, this.preview, this.previewCaption);
    this.message = el("div", { class: "job-message" });
    this.gallery = el("div", { class: "gallery" });
    this.seedLine = el("p", { class: "seed", hidden: true });
    this.curlBox = el("div", { class: "curl-box", hidden: true });
    this.actions = el(
      "div", { class: "job-actions", role: "group", "aria-label": `Actions for job ${short}` },
      el("button", { type: "button", text: "Reuse seed", onclick: () => this.reuseSeed() }),
      el("button", { type: "button", text: "Reuse settings", onclick: () => this.reuseSettings() }),
      el("button", { type: "button", text: "Copy as curl", onclick: () => this.copyCurl() }),
    );
    this.manifestBox = el("div", { class: "manifest-box" });
    this.body = el(
      "div", { class: "job-body", id: this.bodyId },
      this.previewFigure, this.message, this.gallery, this.seedLine, this.actions, this.curlBox, this.manifestBox,
    );
    this.article = el(
      "article", { class: "job", tabindex: -1, "aria-labelledby": headingId, "data-job-id": this.id },
      el(
        "div", { class: "job-head" },
        this.thumb,
        el(
          "div", { class: "job-title" },
          el("h3", { id: headingId }, el("span", { text: operationLabel(this.kind) }), " ", el("code", { text: short })),
          el("p", { class: "job-meta" }, el("time", { datetime: new Date(this.at).toISOString(), text: clock(this.at) }), this.statusLine),
        ),
        el("div", { class: "job-head-actions" }, this.toggle, this.removeButton),
      ),
      this.progressRow,
      this.connection,
      this.body,
    );
    this.node = el("li", { class: "job-item", "data-job-id": this.id }, this.article);
    this.setExpanded(expanded);
  }

  // ---- state shown on the card ---------------------------------------------------------------------------

  setStatus(status, position = null) {
    const changed = status !== this.status;
    this.status = status;
    this.article.dataset.status = status;
    this.statusLine.dataset.status = status;
    let words = STATUS_WORDS[status] || status;
    if (status === "queued" && position !== null && position !== undefined) words = `Queued (position ${position + 1})`;
    this.statusLine.textContent = words;
    const active = isActive(status);
    this.cancelButton.hidden = this.cancelButton.disabled = !active;
    this.progressRow.hidden = !(active || this.bar.value > 0);
    this.removeButton.hidden = active || status === "checking";
    if (changed) this.history.changed(this);
  }

  setProgress(p) {
    this.bar.max = p.total;
    this.bar.value = p.step;
    this.bar.setAttribute("aria-valuetext", `${p.step} of ${p.total}`);
    this.barText.textContent = `${p.stage ? `stage ${p.stage}: ` : ""}${p.step} / ${p.total}`;
    this.progressRow.hidden = false;
  }

  /** Whether the card's stream (or its polling) reaches the service; `text` says what is wrong. */
  setConnection(ok, text = "Connection lost, retrying…") {
    this.connection.hidden = ok;
    this.connection.textContent = ok ? "" : text;
    if (ok) delete this.article.dataset.connection;
    else this.article.dataset.connection = "lost";
  }

  setExpanded(on) {
    this.body.hidden = !on;
    this.toggle.setAttribute("aria-expanded", String(on));
    if (on && this.finished && this.status === "succeeded" && !this.rendered) this.renderResults();
  }

  showSeed(seed) {
    if (seed === null || seed === undefined) return;
    this.seed = seed;
    this.seedLine.hidden = false;
    this.seedLine.replaceChildren("Seed ", el("code", { class: "seed-value", text: String(seed) }));
  }

  /** Expand, scroll to and focus the card (after Run, or from the queue view). */
  reveal() {
    this.setExpanded(true);
    this.article.scrollIntoView({ block: "start" });
    this.article.focus({ preventScroll: true });
  }

  // ---- following the job ---------------------------------------------------------------------------------

  /** Apply a job body (from GET /jobs/{id}, the 202 answer or the `done` event). */
  apply(body) {
    this.job = body;
    if (body.params && Object.keys(body.params).length) this.params = body.params;
    this.showSeed(body.params?.seed);
    if (body.progress) this.setProgress(body.progress);
    if (TERMINAL.has(body.status)) this.finish(body);
    else this.setStatus(body.status, body.queue_position);
  }

  /** Where the job stands now (after a reload): its results if it is over, its stream if it is not. */
  async refresh() {
    let failures = 0;
    while (!this.closed) {
      try {
        const response = await api(`/jobs/${this.id}`);
        if (response.status === 410 || response.status === 404) return this.gone(response.status === 410 ? "expired" : "missing");
        if (response.ok) {
          this.setConnection(true);
          this.apply(await response.json());
          if (!this.finished) this.follow();
          return;
        }
        this.setConnection(false, `The service answered ${response.status}, retrying…`);
      } catch {
        this.setConnection(false);
      }
      failures += 1;
      await sleep(Math.min(1000 * failures, 5000));
    }
  }

  gone(status) {
    this.finished = true;
    this.setConnection(true);
    this.setStatus(status);
    this.progressRow.hidden = true;
    this.previewFigure.hidden = true;
  }

  /** Follow the job until it is over: its event stream when one is free, polling until then. */
  async follow() {
    if (this.following || this.finished) return;
    this.following = true;
    const ticket = STREAMS.take();
    try {
      while (!ticket.granted && !this.finished && !this.closed) {
        await Promise.race([ticket.ready, sleep(POLL_MS)]);
        if (!ticket.granted) await this.poll();
      }
      if (ticket.granted) await this.stream();
    } finally {
      STREAMS.give(ticket);
      this.following = false;
    }
  }

  async poll() {
    try {
      const response = await api(`/jobs/${this.id}`);
      if (response.status === 410 || response.status === 404) return this.gone(response.status === 410 ? "expired" : "missing");
      if (!response.ok) return this.setConnection(false, `The service answered ${response.status}, retrying…`);
      this.setConnection(true);
      this.apply(await response.json());
    } catch {
      this.setConnection(false);
    }
  }

  /** Read the event stream until the terminal event, reconnecting with Last-Event-ID whenever it drops. */
  async stream() {
    let failures = 0;
    while (!this.closed && !this.finished) {
      this.abort = new AbortController();
      let why = "Connection lost, retrying…";
      try {
        const extra = this.lastEventId ? { "Last-Event-ID": this.lastEventId } : {};
        const response = await api(`/jobs/${this.id}/events`, {
          headers: { Accept: "text/event-stream", ...extra }, signal: this.abort.signal,
        });
        if (response.status === 410 || response.status === 404) return this.gone(response.status === 410 ? "expired" : "missing");
        if (response.ok) {
          failures = 0;
          this.setConnection(true);
          await this.read(response.body);
        } else {
          if (response.status === 422) this.lastEventId = null; // a malformed id: start over
          const problem = await problemOf(response);
          why = `The service answered ${response.status}${problem.detail ? ` (${problem.detail})` : ""}, retrying…`;
        }
      } catch {
        if (this.closed) return;
      }
      if (this.finished || this.closed) return;
      this.setConnection(false, why);
      failures += 1;
      await sleep(Math.min(500 * failures, 5000));
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let match;
      while ((match = /\r?\n\r?\n/.exec(buffer))) {
        this.dispatch(buffer.slice(0, match.index));
        buffer = buffer.slice(match.index + match[0].length);
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
    else if (event === "done") this.apply(payload);
  }

  /** Show the newest preview; previews that arrive while one loads are skipped (a replay after a reload
   * announces every preview the job wrote). */
  async showPreview(data) {
    this.pendingPreview = data;
    if (this.previewBusy) return;
    this.previewBusy = true;
    try {
      while (this.pendingPreview && !this.finished && !this.closed) {
        const next = this.pendingPreview;
        this.pendingPreview = null;
        try {
          const url = URL.createObjectURL(await fetchBlob(local(next.url, `/jobs/${this.id}/previews/${next.name}`)));
          this.urls.push(url);
          if (this.finished || this.closed) break;
          this.preview.src = url;
          this.preview.dataset.step = next.step;
          this.previewCaption.textContent = `estimate at step ${next.step} of ${next.total}${next.stage ? ` (stage ${next.stage})` : ""}`;
          this.previewFigure.hidden = false;
          this.thumb.src = url;
          this.thumb.hidden = false;
        } catch {
          /* a preview is best effort */
        }
      }
    } finally {
      this.previewBusy = false;
    }
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      const response = await api(`/jobs/${this.id}/cancel`, { method: "POST" });
      if (response.status === 202 || response.status === 409) return;
      this.say((await problemOf(response)).detail || `the service answered ${response.status}`, "Cancel failed");
    } catch {
      this.say("the service does not answer; try again", "Cancel failed");
    }
    this.cancelButton.disabled = false;
  }

  say(text, title = "") {
    this.message.replaceChildren(el("p", { class: "problem", role: "alert" }, title ? el("strong", { text: `${title}: ` }) : null, text));
  }

  finish(body) {
    if (this.finished) return;
    this.finished = true;
    this.setConnection(true);
    this.setStatus(body.status);
    this.cancelButton.hidden = true;
    if (body.status === "failed") {
      this.say(body.error || "no reason given", "The job failed");
    } else if (body.status === "succeeded") {
      this.bar.value = this.bar.max;
      this.previewFigure.hidden = true; // the last live preview gives way to the result
      this.showThumbnail(body);
      if (!this.body.hidden) this.renderResults();
    }
  }

  async showThumbnail(body) {
    if (!body.result_url) return;
    try {
      const blob = await fetchBlob(local(body.result_url, `/jobs/${this.id}/result`));
      const url = URL.createObjectURL(blob);
      this.urls.push(url);
      this.thumb.src = url;
      this.thumb.alt = `result of job ${this.id.slice(0, 8)}`;
      this.thumb.hidden = false;
    } catch (error) {
      if (error.status === 410) this.gone("expired");
    }
  }

  // ---- results -------------------------------------------------------------------------------------------

  /** The file `name` of the job's results as a <figure>, with a download link and "Send to". */
  async figure(name, { caption = name, big = false, small = false } = {}) {
    const path = this.job.results[name];
    if (!path) return null;
    const blob = this.blobs[name] || await fetchBlob(local(path, `/jobs/${this.id}/files/${name}`));
    this.blobs[name] = blob;
    const url = URL.createObjectURL(blob);
    this.urls.push(url);
    const img = el("img", { src: url, alt: caption, class: `result pixelated${big ? " big" : ""}${small ? " small" : ""}`, "data-name": name });
    const short = this.id.slice(0, 8);
    return el(
      "figure", { class: "result-figure" }, img,
      el("figcaption", {}, caption, " ",
        el("a", { href: url, download: `${short}-${name}`, "aria-label": `download ${name}`, text: "download" }),
        name.endsWith(".png") ? this.sendMenu(name, blob) : null),
    );
  }

  /** "Send to": the image into another operation's image input (SDEdit, inpaint, denoise). */
  sendMenu(name, blob) {
    const targets = state.config.operations.filter((op) => op.uploads.some((u) => u.name === "image") && state.panels[op.name]);
    if (!targets.length) return null;
    return el(
      "details", { class: "send-to" },
      el("summary", { text: "Send to…" }),
      el("div", { class: "send-targets", role: "group", "aria-label": `Send ${name} to` },
        targets.map((op) => el("button", {
          type: "button", text: operationLabel(op.name), "aria-label": `Send ${name} to ${operationLabel(op.name)}`,
          onclick: (event) => {
            event.target.closest("details").open = false;
            const file = new File([blob], `${this.id.slice(0, 8)}-${name}`, { type: blob.type || "image/png" });
            state.panels[op.name].receive(file, `${name} of job ${this.id.slice(0, 8)}`);
          },
        }))),
    );
  }

  async renderResults() {
    if (this.rendered || !this.job) return;
    this.rendered = true;
    const job = this.job;
    const kind = this.kind;
    const files = Object.keys(job.results);
    const params = job.params || {};
    // the main file: the stage-II upscale (result_<size>.png) when there is one, else the stage-I or MNIST result
    const main = files.find((f) => /^result_\d+\.png$/.test(f)) || files.find((f) => f === "result.png" || f === "samples.png");
    const shown = new Set(["manifest.json"]);
    const row = async (names, cls = "compare") => {
      const figures = [];
      for (const [name, options] of names) {
        if (!name || !files.includes(name)) continue;
        shown.add(name);
        figures.push(await this.figure(name, options));
      }
      if (figures.length) this.gallery.append(el("div", { class: cls }, figures));
    };
    try {
      if (kind === "if_sdedit" || kind === "if_inpaint") {
        await row([["input.png", { caption: "input (as used)" }], ...(kind === "if_inpaint" ? [["mask.png", { caption: "mask (as used)" }]] : []), [main, { caption: `output: ${main}`, big: true }]]);
      } else if (kind === "if_denoise") {
        await row([["input.png", { caption: "input" }], ["noisy.png", { caption: `noisy (t = ${params.t})` }], ["result.png", { caption: `denoised (${String(params.method).replace("_", " ")})`, big: true }]]);
      } else if (kind === "if_anagram") {
        const views = files.filter((f) => f.startsWith("view_")).sort();
        await row(views.map((name, i) => [name, { caption: `view ${i + 1} (${name.replace(/^view_\d+_|\.png$/g, "").replace(/_/g, " ")}): ${params.prompts?.[i] ?? ""}`, big: true }]));
      } else if (kind === "if_hybrid" && main) {
        shown.add(main);
        const near = await this.figure(main, { caption: `near: ${params.prompt_high}`, big: true });
        const far = await this.figure(main, { caption: `from afar: ${params.prompt_low}`, small: true });
        this.gallery.append(el("div", { class: "compare" }, near, far));
        await row([["low_frequency.png", { caption: "low frequencies (what you see from afar)" }]]);
      } else {
        await row([[main, { caption: main, big: true }]]);
      }
      await row(files.filter((f) => !shown.has(f)).map((name) => [name, { caption: name }]), "thumbs");
      const manifest = await this.manifest();
      if (manifest) {
        this.showSeed(manifest.seed ?? manifest.request?.seed);
        const text = JSON.stringify(manifest, null, 2);
        const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
        this.urls.push(url);
        this.manifestBox.replaceChildren(el("details", { class: "manifest" },
          el("summary", { text: "manifest.json" }),
          el("pre", { text }),
          el("a", { href: url, download: `${job.id.slice(0, 8)}-manifest.json`, text: "download manifest.json" })));
      }
    } catch (error) {
      if (error.status === 410) this.gone("expired");
      else this.say(`could not load the results (${error.message || error})`);
    }
  }

  /** The job's manifest.json (read once), or null. */
  async manifest() {
    const path = this.job?.results?.["manifest.json"];
    if (!path) return null;
    if (!this.manifestData) {
      const response = await api(streamed(local(path, `/jobs/${this.id}/files/manifest.json`)));
      if (!response.ok) return null;
      this.manifestData = await response.json();
    }
    return this.manifestData;
  }

  // ---- reuse and curl ------------------------------------------------------------------------------------

  panel() {
    const panel = state.panels[this.kind];
    if (!panel) this.say(`this page has no tab for ${this.kind}`);
    return panel;
  }

  reuseSeed() {
    const panel = this.panel();
    if (!panel) return;
    if (this.seed === undefined) return this.say("the seed of this job is not known");
    panel.setSeed(this.seed, `Seed of job ${this.id.slice(0, 8)}.`);
  }

  /** Refill the form with the request the job ran (its manifest's `request`, else its recorded params). */
  async reuseSettings() {
    const panel = this.panel();
    if (!panel) return;
    let request = this.params;
    try {
      const manifest = await this.manifest();
      if (manifest?.request) request = { ...manifest.request, seed: manifest.seed ?? manifest.request.seed };
    } catch {
      /* the recorded params will do */
    }
    if (!request) return this.say("the settings of this job are not known");
    panel.fill(request, `Settings of job ${this.id.slice(0, 8)}.`);
  }

  copyCurl() {
    const op = state.config.operations.find((o) => o.name === this.kind);
    if (!op || !this.params) return this.say("the settings of this job are not known");
    const uploads = op.uploads.map((u) => u.name);
    showCommand(this.curlBox, curlCommand(op, paramsOf(this.params), uploads), uploads.map((name) => [name, null]));
  }

  close() {
    this.closed = true;
    if (this.abort) this.abort.abort();
    for (const url of this.urls) URL.revokeObjectURL(url);
  }
}
