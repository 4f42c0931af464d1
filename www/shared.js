// Helpers shared by the chat (index.html) and the dashboard (dashboard.html).

/** The rooms the demo offers. */
export const ROOMS = ["general", "random", "help"];

export const STATE_LABEL = {
  idle: "Idle",
  connecting: "Connecting",
  open: "Connected",
  "backing-off": "Reconnecting",
  offline: "Offline",
  closed: "Closed",
};

export const TRANSPORT_LABEL = {
  websocket: "WebSocket",
  sse: "SSE",
  "long-polling": "Long polling",
};

/** The claims of a JWT (no verification: the server does that). */
export function jwtClaims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = decodeURIComponent(
      Array.from(atob(part), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    return JSON.parse(json);
  } catch {
    return {};
  }
}

/**
 * A demo token for `name` from `POST /v1/demo-token`, cached in localStorage under `cacheKey`
 * while it has more than a minute left. The same name in two tabs is then the same user with two
 * connections (presence counts them). `fresh` skips the cache.
 */
export async function getDemoToken(name, { cacheKey = `name:${name}`, fresh = false } = {}) {
  const key = `rtlink-demo:token:${cacheKey}`;
  if (!fresh) {
    const cached = safeStorage(() => localStorage.getItem(key));
    if (cached && (jwtClaims(cached).exp ?? 0) * 1000 > Date.now() + 60_000) return cached;
  }
  const res = await fetch("/v1/demo-token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!res.ok) throw new Error(`POST /v1/demo-token answered HTTP ${res.status}`);
  const { token } = await res.json();
  safeStorage(() => localStorage.setItem(key, token));
  return token;
}

export function forgetDemoToken(name, { cacheKey = `name:${name}` } = {}) {
  safeStorage(() => localStorage.removeItem(`rtlink-demo:token:${cacheKey}`));
}

/** Storage throws in some private modes; the demo then just does not remember. */
export function safeStorage(fn) {
  try {
    return fn();
  } catch {
    return null;
  }
}

/** "Ana is typing…", "Ana and Bo are typing…", "Ana, Bo and 2 others are typing…". */
export function typingText(names) {
  const n = names.length;
  if (n === 0) return "";
  if (n === 1) return `${names[0]} is typing…`;
  if (n === 2) return `${names[0]} and ${names[1]} are typing…`;
  if (n === 3) return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  return `${names[0]}, ${names[1]} and ${n - 2} others are typing…`;
}

/** The payload the demo publishes: {text, ts, cid}. Anything else is shown as JSON. */
export function readPayload(payload) {
  if (payload && typeof payload === "object" && !Array.isArray(payload)) {
    return {
      text: typeof payload.text === "string" ? payload.text : JSON.stringify(payload),
      ts: typeof payload.ts === "number" ? payload.ts : Date.now(),
      cid: typeof payload.cid === "string" ? payload.cid : null,
    };
  }
  return { text: typeof payload === "string" ? payload : JSON.stringify(payload), ts: Date.now(), cid: null };
}

export function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** hh:mm:ss.mmm, for the event log. */
export function formatClock(ts = Date.now()) {
  const d = new Date(ts);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

export function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const first = (w) => Array.from(w)[0] ?? "";
  const letters = parts.length > 1 ? first(parts[0]) + first(parts[1]) : first(parts[0] || "?");
  return letters.toUpperCase();
}

/** A stable avatar hue per user (dark enough for white text). */
export function avatarColor(key) {
  let h = 0;
  for (const ch of String(key)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 55% 38%)`;
}

/** A random id for a publish, so the echo can be matched to the pending bubble. */
export function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** Create an element: el("li", {class: "x", dataset: {testid: "y"}}, child, "text"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

/** Presence members that are people (the dashboard joins rooms as an observer). */
export function people(members) {
  return members.filter((m) => !(m.meta && typeof m.meta === "object" && m.meta.role === "observer"));
}

/**
 * Drives a connection badge: data-state/data-transport on the root, labels, attempt and a retry
 * countdown that ticks every 100 ms from `retryInMs` at event time.
 */
export function createBadge(root) {
  const q = (id) => root.querySelector(`[data-testid="${id}"]`);
  const stateEl = q("badge-state");
  const transportEl = q("badge-transport");
  const attemptEl = q("badge-attempt");
  const countdownEl = q("badge-countdown");
  let deadline = null;
  let timer = null;

  function tick() {
    if (deadline == null) {
      countdownEl.textContent = "";
      countdownEl.dataset.ms = "";
      countdownEl.hidden = true;
      return;
    }
    const left = Math.max(0, deadline - performance.now());
    countdownEl.hidden = false;
    countdownEl.dataset.ms = String(Math.round(left));
    countdownEl.textContent = `retry in ${(left / 1000).toFixed(1)} s`;
    if (left <= 0) stop();
  }
  function stop() {
    if (timer != null) clearInterval(timer);
    timer = null;
  }

  return function update(s) {
    root.dataset.state = s.state;
    root.dataset.transport = s.transport ?? "";
    stateEl.textContent = STATE_LABEL[s.state] ?? s.state;
    transportEl.textContent = s.transport ? TRANSPORT_LABEL[s.transport] ?? s.transport : "no transport";
    attemptEl.dataset.attempt = String(s.attempt ?? 0);
    attemptEl.textContent = s.attempt > 0 ? `attempt ${s.attempt}` : "";
    attemptEl.hidden = !(s.attempt > 0);
    stop();
    deadline = s.retryInMs != null ? performance.now() + s.retryInMs : null;
    if (deadline != null) timer = setInterval(tick, 100);
    tick();
  };
}

/** One line for the event log. */
export function describeState(s) {
  const parts = [s.state];
  if (s.transport) parts.push(TRANSPORT_LABEL[s.transport] ?? s.transport);
  if (s.attempt > 0) parts.push(`attempt ${s.attempt}`);
  if (s.retryInMs != null) parts.push(`reconnecting in ${s.retryInMs} ms`);
  if (s.reason) parts.push(`reason: ${s.reason}`);
  return parts.join(" · ");
}
