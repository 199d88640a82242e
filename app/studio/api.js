/* The page's one connection to the service: the shared state, the X-API-Key header, problem+json answers
 * and result files as blob: URLs (an <img> cannot send the key itself). */

const KEY_STORAGE = "studio.apiKey";

/** What every module shares: /studio/config.json, /openapi.json, the last /readyz answer, the API key,
 * the panels by operation name, the history, and `select(panel)` (set by studio.js). */
export const state = {
  config: null,
  spec: null,
  ready: null,
  apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
  panels: {},
  history: null,
  select: null,
};

export function headers(extra = {}) {
  return state.apiKey ? { ...extra, "X-API-Key": state.apiKey } : extra;
}

/** fetch() with the API key; a 401 asks for the key again. */
export async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) askForKey("The service refused the key; enter it again.");
  return response;
}

/** The problem+json of an error answer (or a stand-in when the body is not JSON). */
export async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { status: response.status, detail: `${response.status} ${response.statusText}` };
  }
}

/** A path of this service for a result URL: the URL itself when it is on this host, else `fallback` (the
 * page's Content-Security-Policy allows no other host). */
export function local(url, fallback) {
  try {
    const parsed = new URL(url, location.origin);
    return parsed.origin === location.origin ? parsed.pathname + parsed.search : fallback;
  } catch {
    return fallback;
  }
}

/** `path` with `redirect=false`: a result streams through this service even when it would redirect to an object
 * store on another host (which this page's Content-Security-Policy, and the API key, must not reach). */
export function streamed(path) {
  return path + (path.includes("?") ? "&" : "?") + "redirect=false";
}

/** The file at `path` as a Blob (streamed through this service); throws an Error with `.status` on an error
 * answer. */
export async function fetchBlob(path) {
  const response = await api(streamed(path));
  if (!response.ok) {
    const error = new Error(`${path}: ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return response.blob();
}

/** The absolute URL of a path of this service (for curl). */
export const absolute = (path) => new URL(path, location.origin).href;

// ---- the API key dialog ----------------------------------------------------------------------------------

let keyWaiters = [];

export function askForKey(message = "") {
  const dialog = document.getElementById("api-key-dialog");
  document.getElementById("api-key-error").textContent = message;
  document.getElementById("api-key-input").value = state.apiKey;
  if (!dialog.open) dialog.showModal();
}

/** Wire the dialog; resolves once a key is known (at once when the service needs none or one is stored). */
export function setUpKeyDialog() {
  const form = document.getElementById("api-key-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = document.getElementById("api-key-input").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    document.getElementById("api-key-dialog").close();
    for (const done of keyWaiters) done();
    keyWaiters = [];
  });
  const button = document.getElementById("api-key-button");
  button.addEventListener("click", () => askForKey());
  if (!state.config.api_key_required) return Promise.resolve();
  button.hidden = false;
  if (state.apiKey) return Promise.resolve();
  askForKey();
  return new Promise((done) => keyWaiters.push(done));
}
