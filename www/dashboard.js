// The live dashboard: server → client only, over Server-Sent Events. It subscribes to every chat
// room read-only and shows message counts, who is online and the latest messages as they happen,
// and the live metrics a backend pushes through the server API (examples/metrics-pusher.py
// publishes to the rooms `metrics:host` and `metrics:server` once a second).
import init, { RealtimeClient } from "./pkg/rtlink.js";
import {
  ROOMS, createBadge, el, formatTime, getDemoToken, people, readPayload,
} from "./shared.js";

const MAX_FEED = 50;
const TOAST_MS = 4000;

const byTest = (id) => document.querySelector(`[data-testid="${id}"]`);
const updateBadge = createBadge(byTest("badge"));
const cards = byTest("room-cards");
const feed = byTest("feed");
const feedEmpty = byTest("feed-empty");
const toasts = byTest("toasts");

const rooms = new Map();
for (const name of ROOMS) {
  const count = el("div", { class: "stat", dataset: { testid: `room-count-${name}` }, text: "0" });
  const online = el("span", { class: "count", dataset: { testid: `room-online-count-${name}` }, text: "0 online" });
  const chips = el("ul", { class: "chips", dataset: { testid: `room-people-${name}` }, "aria-label": `People in #${name}` });
  const last = el("p", { class: "last", dataset: { testid: `room-last-${name}` }, text: "No messages yet" });
  cards.append(el("article", { class: "card room-card", dataset: { testid: `room-card-${name}` }, "aria-label": `#${name}` },
    el("h2", {}, el("span", { text: `#${name}` }), online),
    count,
    el("div", { class: "stat-label", text: "messages since you opened this page" }),
    chips,
    last));
  rooms.set(name, { count: 0, countEl: count, onlineEl: online, chipsEl: chips, lastEl: last });
}

function onMessage(m) {
  const r = rooms.get(m.room);
  if (!r) return;
  const { text, ts } = readPayload(m.payload);
  const who = m.name ?? m.sender;
  r.count += 1;
  r.countEl.textContent = String(r.count);
  r.lastEl.textContent = `${who}: ${text}`;

  feedEmpty.hidden = true;
  feed.prepend(el("li", { class: "feed-item", dataset: { testid: "feed-item", room: m.room } },
    el("div", { class: "feed-head" },
      el("span", { class: "feed-room", text: `#${m.room}` }),
      el("span", { text: who }),
      el("time", { datetime: new Date(ts).toISOString(), text: formatTime(ts) })),
    el("p", { text })));
  while (feed.children.length > MAX_FEED) feed.lastElementChild.remove();

  const toast = el("div", { class: "toast", dataset: { testid: "toast" } },
    el("strong", { text: `${who} in #${m.room}` }), el("div", { text: text.length > 120 ? `${text.slice(0, 117)}…` : text }));
  toasts.append(toast);
  while (toasts.children.length > 3) toasts.firstElementChild.remove();
  setTimeout(() => toast.remove(), TOAST_MS);
}

// Live metrics: one tile per number, with a sparkline of the last METRIC_POINTS values. A tab
// opened later starts with the recent values (`history` on subscribe), then goes live.
const METRIC_POINTS = 60;
const METRIC_ROOMS = ["metrics:host", "metrics:server"];
const METRICS = [
  { key: "load1", room: "metrics:host", label: "Load, 1 min", value: (p) => p.load1, show: (v) => v.toFixed(2), note: (p) => (p.cpus ? `${p.cpus} CPUs on ${p.name}` : p.name) },
  { key: "mem", room: "metrics:host", label: "Memory used", value: (p) => (p.mem_total ? (100 * p.mem_used) / p.mem_total : undefined), show: (v) => `${v.toFixed(0)} %`, note: (p) => `${(p.mem_total / 2 ** 30).toFixed(1)} GiB in all` },
  { key: "connections", room: "metrics:server", label: "Open connections", value: (p) => p.connections, show: (v) => String(Math.round(v)), note: () => "all transports" },
  { key: "sessions", room: "metrics:server", label: "Sessions", value: (p) => p.sessions, show: (v) => String(Math.round(v)), note: () => "connected or resumable" },
  { key: "published", room: "metrics:server", label: "Messages published", value: (p) => p.published, show: (v) => String(Math.round(v)), note: () => "since the server started" },
];
const metricsGrid = byTest("metrics-grid");
const metricsEmpty = byTest("metrics-empty");
const tiles = new Map();
for (const m of METRICS) {
  const value = el("div", { class: "stat", dataset: { testid: `metric-${m.key}` }, text: "–" });
  const note = el("div", { class: "stat-label", text: "" });
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${METRIC_POINTS - 1} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  svg.append(line);
  const tile = el("div", { class: "metric", dataset: { testid: `metric-tile-${m.key}` }, hidden: true },
    el("div", { class: "stat-label", text: m.label }), value, svg, note);
  metricsGrid.append(tile);
  tiles.set(m.key, { ...m, tile, valueEl: value, noteEl: note, line, points: [] });
}

function onMetrics(room, payload) {
  if (!payload || typeof payload !== "object") return;
  for (const t of tiles.values()) {
    if (t.room !== room) continue;
    const v = t.value(payload);
    if (typeof v !== "number" || !Number.isFinite(v)) continue;
    t.points.push(v);
    if (t.points.length > METRIC_POINTS) t.points.shift();
    t.valueEl.textContent = t.show(v);
    t.noteEl.textContent = t.note(payload) ?? "";
    t.tile.hidden = false;
    const max = Math.max(...t.points), min = Math.min(...t.points);
    const span = max - min || 1;
    const offset = METRIC_POINTS - t.points.length;
    t.line.setAttribute("points", t.points.map((p, i) => `${offset + i},${96 - ((p - min) / span) * 92}`).join(" "));
  }
  metricsEmpty.hidden = true;
  metricsGrid.dataset.updated = String(payload.ts ?? Date.now());
}

function onPresence(room, members) {
  const r = rooms.get(room);
  const list = people(members).sort((a, b) => a.name.localeCompare(b.name));
  r.onlineEl.textContent = `${list.length} online`;
  r.chipsEl.replaceChildren(...list.map((m) => el("li", {
    class: "chip", dataset: { testid: "room-person", name: m.name, connections: String(m.connections) },
    text: m.connections > 1 ? `${m.name} ×${m.connections}` : m.name,
  })));
}

await init();
const client = new RealtimeClient({
  url: location.origin,
  getToken: () => getDemoToken("Dashboard", { cacheKey: "dashboard" }),
  transports: ["sse"],
  rememberTransport: false,
});
client.on("state", updateBadge);
client.connect();
for (const name of ROOMS) {
  const room = client.room(name);
  // Marks this connection as an observer, so the chat does not list the dashboard as a person.
  room.presence.set({ role: "observer" });
  room.on("message", onMessage);
  room.presence.on("change", (members) => onPresence(name, members));
}
for (const name of METRIC_ROOMS) {
  client.room(name, { history: METRIC_POINTS }).on("message", (m) => onMetrics(name, m.payload));
}
document.documentElement.dataset.ready = "true";
