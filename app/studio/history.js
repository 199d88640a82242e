/* The history rail: every job run from this browser, newest first, kept in localStorage (id, operation,
 * time, last status and parameters; never images). After a reload, running jobs are followed again and
 * finished ones show their results; entries further down are looked up when they scroll into view. */

import { state } from "./api.js";
import { el } from "./dom.js";
import { JobCard, isActive, isGone } from "./jobs.js";

const STORE = "studio.history.v1";
const KEEP = 200; // finished entries beyond the newest KEEP are dropped

function stored() {
  try {
    const entries = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(entries) ? entries.filter((e) => e && typeof e.id === "string" && e.kind) : [];
  } catch {
    return [];
  }
}

export class History {
  constructor() {
    this.cards = new Map();
    this.removed = new Set();
    this.list = document.getElementById("history-list");
    this.empty = document.getElementById("history-empty");
    this.note = document.getElementById("history-note");
    this.onChange = () => {};
    document.getElementById("history-clear").addEventListener("click", () => this.clearFinished());
    this.lookup = new IntersectionObserver((seen) => {
      for (const item of seen) {
        if (!item.isIntersecting) continue;
        this.lookup.unobserve(item.target);
        this.cards.get(item.target.dataset.jobId)?.refresh();
      }
    }, { rootMargin: "300px" });
  }

  /** The stored entries as cards: the newest expanded; running ones followed at once. */
  load() {
    stored().sort((a, b) => b.at - a.at).forEach((entry, i) => {
      const card = new JobCard(this, entry, { expanded: i === 0 });
      this.cards.set(card.id, card);
      this.list.append(card.node);
      if (isGone(entry.status)) card.gone(entry.status);
      else if (i === 0 || isActive(entry.status) || !entry.status) card.refresh();
      else this.lookup.observe(card.node);
    });
    this.update();
  }

  /** A job the page just submitted (its 202 body): a new card on top, followed; `reveal` moves to it. */
  add(job, { reveal = false } = {}) {
    const at = Date.parse(job.created_at) || Date.now();
    const card = new JobCard(this, { id: job.id, kind: job.kind, at, status: job.status, params: job.params }, { expanded: true });
    this.cards.set(card.id, card);
    this.list.prepend(card.node);
    card.apply(job);
    card.follow();
    this.save();
    this.update();
    if (reveal) card.reveal();
    return card;
  }

  remove(card) {
    if (isActive(card.status)) return;
    const next = card.node.nextElementSibling || card.node.previousElementSibling;
    card.close();
    card.node.remove();
    this.cards.delete(card.id);
    this.removed.add(card.id);
    this.save();
    this.update();
    (next?.querySelector("article") || document.getElementById("history-title")).focus();
  }

  /** Remove every entry but the queued and running jobs (cancel those first: removing them would leave
   * them running where no page shows them). */
  clearFinished() {
    let kept = 0;
    for (const card of [...this.cards.values()]) {
      if (isActive(card.status)) {
        kept += 1;
        continue;
      }
      card.close();
      card.node.remove();
      this.cards.delete(card.id);
      this.removed.add(card.id);
    }
    this.save();
    this.update();
    if (!kept) document.getElementById("history-title").focus(); // the button it was on is hidden now
    this.note.textContent = kept
      ? `Kept ${kept} running or queued job${kept === 1 ? "" : "s"}: cancel ${kept === 1 ? "it" : "them"} first to remove ${kept === 1 ? "it" : "them"}.`
      : "History cleared.";
  }

  /** A card's status changed: store it and update the queue view. */
  changed(card) {
    if (!this.cards.has(card.id)) return;
    this.save();
    this.update();
  }

  /** Write the entries, merged with what another tab of this studio may have stored meanwhile. */
  save() {
    const mine = [...this.cards.values()].map((card) => card.entry());
    const ids = new Set(mine.map((e) => e.id));
    const others = stored().filter((e) => !ids.has(e.id) && !this.removed.has(e.id));
    const all = [...mine, ...others].sort((a, b) => b.at - a.at);
    let finished = 0;
    const kept = all.filter((e) => isActive(e.status) || ++finished <= KEEP);
    try {
      localStorage.setItem(STORE, JSON.stringify(kept));
    } catch {
      this.note.textContent = "This browser does not let the page store its history; it will be lost on reload.";
    }
  }

  /** Cards in the order shown. */
  ordered() {
    return [...this.list.children].map((node) => this.cards.get(node.dataset.jobId)).filter(Boolean);
  }

  update() {
    this.empty.hidden = this.cards.size > 0;
    document.getElementById("history-clear").hidden = this.cards.size === 0;
    this.onChange();
  }
}

/** The header's queue view: this browser's running and queued jobs, and the service's totals (/readyz's
 * queue_depth, and `running` where the service reports it). */
export function renderQueue() {
  const summary = document.getElementById("queue-summary");
  const list = document.getElementById("queue-list");
  const cards = state.history ? state.history.ordered() : [];
  const running = cards.filter((c) => c.status === "running");
  const queued = cards.filter((c) => c.status === "queued");
  const mine = `Your jobs: ${running.length} running, ${queued.length} queued`;
  const ready = state.ready;
  let service = "";
  if (ready && ready.redis !== false && typeof ready.queue_depth === "number") {
    const total = ready.running;
    const count = typeof total === "number" ? total : Array.isArray(total) ? total.length : null;
    service = ` · service: ${count === null ? "" : `${count} running, `}${ready.queue_depth} queued`;
  }
  summary.textContent = mine + service;
  list.replaceChildren(
    ...[...running, ...queued].map((card) => el("li", {},
      el("button", {
        type: "button", class: "linklike",
        text: `${card.article.querySelector("h3").textContent}: ${card.statusLine.textContent}${card.barText.textContent ? ` ${card.barText.textContent}` : ""}`,
        onclick: () => { document.getElementById("queue").open = false; card.reveal(); },
      }))),
  );
  if (!list.children.length) list.append(el("li", { class: "hint", text: "Nothing of yours is running or queued." }));
}
