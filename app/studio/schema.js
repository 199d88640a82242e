/* What the page reads from /openapi.json: the fields of an operation, their defaults (a `default` beside a
 * `$ref` included), limits and descriptions; and the words people see: labels, hints, and the messages of
 * the checks the schema states (ranges, odd sizes, non-empty prompts) and of the server's problem+json. */

import { state } from "./api.js";

export const LABELS = {
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
  priority: "Priority (among your own jobs)",
  cache: "Answer from the result cache (with a seed)",
  webhook: "Webhook URL",
  webhook_events: "Webhook events",
};

/** Hints in the page's words where the schema's description speaks to API clients (settings, routes). */
const FIELD_HINTS = {
  seed: () => "the same seed and settings give the same image; empty = a new random seed (each result shows its seed)",
  previews: (config) => `show the current estimate every ${config.preview_every} steps while the job runs`,
  trajectory: () => "also save those estimates as an animated GIF and a strip",
  webhook: () =>
    "an http(s) address that gets a signed POST with the job when it ends; the service only calls addresses its operator allows (not this machine's or a private network's, unless allowed)",
  webhook_events: () => "when the address is called: at the start, during the run (at most twice a second), at the end (the default)",
  priority: () => "orders your own waiting jobs: high ones start before normal ones, normal before low; other people's jobs are not affected",
  cache: () => "with a seed, answer at once from an earlier identical job (the same bytes); off always runs the job",
};

export const labelOf = (name) => FIELD_LABELS[name] || name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, " ");
export const operationLabel = (kind) => LABELS[kind] || kind;

/** A schema with its `$ref` followed; the keywords beside the `$ref` (default, description, ...) win. */
export function resolve(schema) {
  if (schema && schema.$ref) {
    const { $ref, ...siblings } = schema;
    return { ...resolve(state.spec.components.schemas[$ref.split("/").pop()]), ...siblings };
  }
  return schema || {};
}

/** The non-null branch of an `anyOf [T, null]` (with the keywords beside the anyOf), and whether null is allowed. */
export function nonNull(schema) {
  schema = resolve(schema);
  if (!schema.anyOf) return { schema, nullable: false };
  const { anyOf, ...siblings } = schema;
  const branches = anyOf.map(resolve);
  const real = branches.filter((b) => b.type !== "null");
  return { schema: { ...real[0], ...siblings }, nullable: real.length < branches.length };
}

/** Every field of an operation: {name: {schema, required}} in the order of the OpenAPI document. */
export function fieldsOf(op) {
  const post = state.spec.paths[op.path].post;
  const fields = {};
  if (op.transport === "query") {
    for (const p of post.parameters || []) {
      if (p.in === "query") fields[p.name] = { schema: { description: p.description, ...p.schema }, required: !!p.required };
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

const BIG = 1e15; // a maximum above this (the seed's 2**63 - 1) is not worth showing

/** "from 1 to 100", "more than 0 and at most 20", "0 or more", or "". */
export function rangeText(schema) {
  const hi = schema.maximum !== undefined && schema.maximum < BIG ? schema.maximum : undefined;
  if (schema.exclusiveMinimum !== undefined) {
    return hi === undefined ? `more than ${schema.exclusiveMinimum}` : `more than ${schema.exclusiveMinimum} and at most ${hi}`;
  }
  if (schema.minimum !== undefined && hi !== undefined) return `from ${schema.minimum} to ${hi}`;
  if (schema.minimum !== undefined) return `${schema.minimum} or more`;
  if (hi !== undefined) return `at most ${hi}`;
  return "";
}

/** Whether an integer enum is "every odd number from a to b" (the hybrid's kernel size). */
function oddRange(values) {
  return values.length > 1 && values.every((v, i) => v % 2 === 1 && (i === 0 || v === values[i - 1] + 2));
}

/** The hint under a field: its description in the page's words, and its limits (not for a list to pick from). */
export function hintOf(name, schema, config, { picked = false } = {}) {
  let text = FIELD_HINTS[name] ? FIELD_HINTS[name](config) : schema.description || "";
  text = text.replace(/\s*\(at most [A-Z][A-Z0-9_]+\)/g, ""); // the limit itself is shown below
  const limits = [];
  if (schema.enum && schema.type === "integer" && oddRange(schema.enum)) {
    limits.push(`odd, from ${schema.enum[0]} to ${schema.enum[schema.enum.length - 1]}`);
  } else if (!picked && (schema.type === "integer" || schema.type === "number")) {
    const range = rangeText(schema);
    if (range && range !== "0 or more") limits.push(range);
  }
  if (schema.maxLength) limits.push(`at most ${schema.maxLength} characters`);
  return [text, limits.length ? `(${limits.join(", ")})` : ""].filter(Boolean).join(" ");
}

/** Check a number typed into `input` against its schema: {text} to send (null for empty) or {error}. */
export function checkNumber(input, schema, required) {
  const example = schema.examples?.[0] ?? schema.default ?? schema.minimum ?? 1;
  if (input.validity.badInput) return { error: `Not a number: type digits only, for example ${example}.` };
  const raw = input.value.trim();
  if (raw === "") return required ? { error: "Required: enter a number." } : { text: null };
  const n = Number(raw);
  if (!Number.isFinite(n)) return { error: `Not a number: type digits only, for example ${example}.` };
  let text = String(n);
  const whole = schema.type === "integer";
  if (whole) {
    if (!Number.isInteger(n)) return { error: "Enter a whole number." };
    if (/^\d+$/.test(raw)) text = BigInt(raw).toString(); // exact beyond 2**53 (seeds)
  }
  const kind = whole ? "a whole number" : "a number";
  const range = rangeText(schema);
  const tooLow = schema.minimum !== undefined && n < schema.minimum;
  const notAbove = schema.exclusiveMinimum !== undefined && n <= schema.exclusiveMinimum;
  const tooHigh = schema.maximum !== undefined && schema.maximum < BIG && n > schema.maximum;
  if (tooLow || notAbove || tooHigh) return { error: `Enter ${kind} ${range}.` };
  if (schema.enum && !schema.enum.includes(n)) {
    return oddRange(schema.enum)
      ? { error: `Choose an odd number from ${schema.enum[0]} to ${schema.enum[schema.enum.length - 1]}.` }
      : { error: `Choose one of ${schema.enum.join(", ")}.` };
  }
  return { text };
}

/** Check text against its schema (non-blank where the schema says so, its length): {text} or {error}. An empty
 * optional field that may be null (a webhook URL) is simply not sent, whatever its string branch requires. */
export function checkText(name, raw, schema, required, nullable = false) {
  const mustHaveText = required || (!nullable && ((schema.minLength || 0) > 0 || schema.pattern === "\\S"));
  if (!/\S/.test(raw)) {
    if (!mustHaveText && raw === "") return { text: null };
    return { error: name.startsWith("prompt") ? "Write a prompt: it cannot be empty." : "Required: this cannot be empty." };
  }
  if (schema.maxLength && raw.length > schema.maxLength) {
    return { error: `Too long: ${raw.length} characters, at most ${schema.maxLength}.` };
  }
  return { text: raw };
}

/** A server validation reason (pydantic's words) as a sentence for people. */
export function humanReason(reason, name = "") {
  const text = String(reason || "").trim();
  const rules = [
    [/^Field required$/, () => (name.startsWith("prompt") ? "Write a prompt: it cannot be empty." : "Required.")],
    [/^String should match pattern/, () => "Cannot be blank: write some text."],
    [/^String should have at least 1 character/, () => "Cannot be empty."],
    [/^String should have at most (\d+) characters?/, (m) => `Too long: at most ${m[1]} characters.`],
    [/^Input should be less than or equal to (\S+)/, (m) => `Too large: at most ${m[1]}.`],
    [/^Input should be greater than or equal to (\S+)/, (m) => `Too small: at least ${m[1]}.`],
    [/^Input should be greater than (\S+)/, (m) => `Too small: more than ${m[1]}.`],
    [/^Input should be less than (\S+)/, (m) => `Too large: less than ${m[1]}.`],
    [/^Input should be a valid integer/, () => "Enter a whole number."],
    [/^Input should be a valid number/, () => "Enter a number."],
    [/^Input should be a valid boolean/, () => "Should be on or off."],
    [/^List should have at least (\d+) items?/, (m) => `Give at least ${m[1]}.`],
    [/^Input should be (.+)$/, (m) => `Choose ${m[1].replace(/'/g, "")}.`],
    [/^Value error, (.+)$/, (m) => `${m[1].charAt(0).toUpperCase()}${m[1].slice(1)}${/[.!?]$/.test(m[1]) ? "" : "."}`],
  ];
  for (const [pattern, say] of rules) {
    const match = pattern.exec(text);
    if (match) return say(match);
  }
  return text ? `${text.charAt(0).toUpperCase()}${text.slice(1)}` : "Not accepted by the service.";
}
