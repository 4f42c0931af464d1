// The live dashboard: server → client only, over Server-Sent Events. It subscribes to every chat
// room read-only and shows message counts, who is online and the latest messages as they happen.
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
document.documentElement.dataset.ready = "true";
