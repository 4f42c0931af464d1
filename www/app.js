// The rtlink demo chat: rooms, presence, typing, a connection badge and controls that break things.
import init, { RealtimeClient, RtlinkError } from "./pkg/rtlink.js";
import {
  ROOMS, TRANSPORT_LABEL, avatarColor, createBadge, describeState, el, forgetDemoToken, formatClock,
  formatTime, getDemoToken, initials, jwtClaims, people, randomId, readPayload, safeStorage, typingText,
} from "./shared.js";

const NAME_KEY = "rtlink-demo:name";
const ROOM_KEY = "rtlink-demo:room";
const FORCE_KEY = "rtlink-demo:transport";
const MAX_LOG = 150;

const byId = (id) => document.getElementById(id);
const byTest = (id) => document.querySelector(`[data-testid="${id}"]`);

const ui = {
  joinView: byId("join-view"),
  joinForm: byId("join-form"),
  joinError: byId("join-error"),
  nameInput: byTest("name-input"),
  chatView: byId("chat-view"),
  roomList: byId("room-list"),
  roomTitle: byTest("room-title"),
  presenceList: byTest("presence-list"),
  presenceCount: byTest("presence-count"),
  meName: byTest("me-name"),
  messages: byTest("message-list"),
  empty: byTest("empty-state"),
  typing: byTest("typing-indicator"),
  composer: byId("composer"),
  input: byTest("send-input"),
  transportSelect: byTest("transport-select"),
  offlineToggle: byTest("offline-toggle"),
  drainButton: byTest("drain-button"),
  leaveButton: byTest("leave-button"),
  log: byTest("event-log"),
};
const updateBadge = createBadge(byTest("badge"));

/** Everything the page knows. */
const app = {
  me: { name: null, user: null },
  client: null,
  clientUnsubs: [],
  room: null, // {name, handle, unsubs}
  roomName: safeStorage(() => sessionStorage.getItem(ROOM_KEY)) || ROOMS[0],
  /** room → entries {key, cid, offset, user, name, text, ts, mine, status, error, node} */
  messages: new Map(ROOMS.map((r) => [r, []])),
  simulatedOffline: false,
};
if (!ROOMS.includes(app.roomName)) app.roomName = ROOMS[0];

// ---------------------------------------------------------------------------------------------
// Connection

async function getToken() {
  const token = await getDemoToken(app.me.name);
  app.me.user = jwtClaims(token).sub ?? null;
  return token;
}

function createClient() {
  const forced = safeStorage(() => sessionStorage.getItem(FORCE_KEY)) || "auto";
  ui.transportSelect.value = forced;
  const options = { url: location.origin, getToken };
  if (forced !== "auto") {
    options.transports = [forced];
    options.rememberTransport = false;
  }
  const client = new RealtimeClient(options);
  app.client = client;
  app.clientUnsubs = [
    client.on("state", onState),
    client.on("transport", (t) => log(`last working transport is now ${TRANSPORT_LABEL[t] ?? t}`)),
    client.on("error", onClientError),
  ];
  log(forced === "auto" ? "client created (all transports)" : `client created (${TRANSPORT_LABEL[forced]} only)`);
  client.connect();
  if (app.simulatedOffline) window.dispatchEvent(new Event("offline"));
  joinRoom(app.roomName);
}

function destroyClient() {
  leaveRoom();
  app.clientUnsubs.forEach((u) => u());
  app.clientUnsubs = [];
  if (app.client) {
    app.client.close();
    app.client = null;
  }
}

function onState(s) {
  updateBadge(s);
  log(describeState(s), s.state);
}

function onClientError(e) {
  log(`client stopped: ${e.code}: ${e.message}`, "closed");
  // Decided on the error's code, never on its message text (that is for people).
  if (e instanceof RtlinkError && e.code === "unauthorized") {
    // The server no longer accepts our cached token (`make demo` restarted it with a new demo
    // secret): start over with a fresh token, which is a fresh identity.
    log("token refused: getting a new demo token and reconnecting");
    forgetDemoToken(app.me.name);
    setTimeout(() => {
      if (!app.me.name) return;
      destroyClient();
      createClient();
    }, 250);
  }
}

// ---------------------------------------------------------------------------------------------
// Rooms and messages

function joinRoom(name) {
  leaveRoom();
  app.roomName = name;
  safeStorage(() => sessionStorage.setItem(ROOM_KEY, name));
  // Joining shows the room's recent messages; coming back to a room replays them again, which
  // onMessage recognises by offset.
  const handle = app.client.room(name, { history: 50 });
  const ctx = { name, handle, unsubs: [] };
  ctx.unsubs.push(
    handle.on("message", (m) => onMessage(m)),
    handle.on("subscribed", () => log(`joined #${name}`)),
    handle.on("resync", () => log(`#${name}: history no longer reaches back, some messages were missed`)),
    handle.on("error", (e) => log(`#${name} refused: ${e.code}`)),
    handle.presence.on("change", (members) => ctx === app.room && renderPresence(members)),
    handle.typing.on("change", (users) => ctx === app.room && renderTyping(users)),
  );
  handle.presence.set({ status: document.hidden ? "away" : "active" });
  app.room = ctx;
  renderRooms();
  renderMessages();
  renderPresence(handle.presence.list());
  renderTyping(handle.typing.list());
}

function leaveRoom() {
  const ctx = app.room;
  if (!ctx) return;
  app.room = null;
  ctx.unsubs.forEach((u) => u());
  try {
    ctx.handle.leave();
  } catch (e) {
    console.warn("leave", e);
  }
}

function onMessage(m) {
  const { text, ts, cid } = readPayload(m.payload);
  const list = app.messages.get(m.room) ?? [];
  app.messages.set(m.room, list);
  const own = cid ? list.find((e) => e.cid === cid) : null;
  if (own) {
    // Our own publish came back: it is stored at this offset. It stays "pending" until the
    // publish promise resolves.
    own.offset = m.offset;
    if (m.room === app.roomName) renderEntry(own);
    return;
  }
  if (list.some((e) => e.offset === m.offset)) return; // replayed history we already show
  const entry = {
    key: `${m.room}:${m.offset}`, cid, offset: m.offset, user: m.sender, name: m.name ?? m.sender,
    text, ts, mine: m.sender === app.me.user, status: "received", error: null, node: null,
  };
  list.push(entry);
  const previous = list[list.length - 2];
  if (previous && previous.offset != null && previous.offset > m.offset) {
    // History older than what we already show: keep the list in offset order (pending sends last).
    list.sort((a, b) => (a.offset ?? Infinity) - (b.offset ?? Infinity));
    if (m.room === app.roomName) renderMessages();
    return;
  }
  if (m.room === app.roomName) appendEntry(entry);
}

async function send(text) {
  const ctx = app.room;
  if (!ctx) return;
  const cid = randomId();
  const ts = Date.now();
  const entry = {
    key: `local:${cid}`, cid, offset: null, user: app.me.user, name: app.me.name, text, ts,
    mine: true, status: "pending", error: null, node: null,
  };
  app.messages.get(ctx.name).push(entry);
  appendEntry(entry);
  try {
    const { offset } = await ctx.handle.publish({ text, ts, cid });
    entry.offset = offset;
    entry.status = "sent";
  } catch (e) {
    entry.status = "failed";
    entry.error = e instanceof RtlinkError ? e.code : String(e?.message ?? e);
    log(`publish failed: ${entry.error}`, "closed");
  }
  if (ctx.name === app.roomName) renderEntry(entry);
}

// ---------------------------------------------------------------------------------------------
// Rendering

function renderRooms() {
  ui.roomList.replaceChildren(
    ...ROOMS.map((r) => {
      const current = r === app.roomName;
      return el("li", {},
        el("button", {
          type: "button", class: "room-button", dataset: { testid: `room-${r}`, room: r },
          "aria-current": current ? "true" : null, onclick: () => switchRoom(r),
        }, el("span", { class: "hash", "aria-hidden": "true", text: "#" }), r));
    }),
  );
  ui.roomTitle.textContent = app.roomName;
  document.title = `#${app.roomName} · rtlink demo chat`;
}

function switchRoom(r) {
  if (r === app.roomName || !app.client) return;
  app.room?.handle.typing.stop();
  joinRoom(r);
  log(`switched to #${r}`);
  ui.input.focus();
}

function renderMessages() {
  const list = app.messages.get(app.roomName) ?? [];
  for (const e of list) e.node = null;
  ui.messages.replaceChildren(...list.map(buildEntry));
  ui.empty.hidden = list.length > 0;
  scrollToEnd(true);
}

function appendEntry(entry) {
  const near = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
  ui.messages.append(buildEntry(entry));
  ui.empty.hidden = true;
  scrollToEnd(near || entry.mine);
}

function buildEntry(entry) {
  const node = el("li", { class: "msg", dataset: { testid: "message" } });
  entry.node = node;
  fillEntry(entry);
  return node;
}

function renderEntry(entry) {
  if (entry.node) fillEntry(entry);
}

function fillEntry(e) {
  const node = e.node;
  node.className = `msg${e.mine ? " mine" : ""}`;
  node.dataset.status = e.status;
  node.dataset.sender = e.name;
  node.dataset.offset = e.offset ?? "";
  const status = e.mine
    ? el("span", {
      class: `msg-status status-${e.status}`, dataset: { testid: "message-status" },
      text: e.status === "failed" ? `failed: ${e.error}` : e.status === "received" ? "sent" : e.status,
    })
    : null;
  node.replaceChildren(
    el("span", { class: "avatar", "aria-hidden": "true", style: `background:${avatarColor(e.user ?? e.name)}`, text: initials(e.name) }),
    el("div", { class: "bubble" },
      el("div", { class: "msg-meta" },
        el("span", { class: "msg-name", dataset: { testid: "message-sender" }, text: e.mine ? `${e.name} (you)` : e.name }),
        el("time", { class: "msg-time", datetime: new Date(e.ts).toISOString(), text: formatTime(e.ts) }),
        status),
      el("p", { class: "msg-text", dataset: { testid: "message-text" }, text: e.text })),
  );
}

function scrollToEnd(force) {
  if (force) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function renderPresence(members) {
  const list = people(members).sort((a, b) => a.name.localeCompare(b.name));
  ui.presenceCount.textContent = String(list.length);
  ui.presenceList.replaceChildren(
    ...list.map((m) => {
      const you = m.user === app.me.user;
      const away = m.meta && typeof m.meta === "object" && m.meta.status === "away";
      const conns = m.connections;
      return el("li", {
        class: `member${away ? " away" : ""}`,
        dataset: { testid: "presence-item", user: m.user, name: m.name, connections: String(conns) },
      },
      el("span", { class: "avatar small", "aria-hidden": "true", style: `background:${avatarColor(m.user)}`, text: initials(m.name) }),
      el("span", { class: "member-name", dataset: { testid: "presence-name" }, text: you ? `${m.name} (you)` : m.name }),
      el("span", {
        class: "conns", dataset: { testid: "presence-connections" },
        title: `${conns} open ${conns === 1 ? "tab or device" : "tabs or devices"}`,
        text: `${conns} ${conns === 1 ? "tab" : "tabs"}`,
      }),
      away ? el("span", { class: "visually-hidden", text: "(away)" }) : null);
    }),
  );
}

function renderTyping(users) {
  const names = users.filter((u) => u.user !== app.me.user).map((u) => u.name);
  ui.typing.textContent = typingText(names);
  ui.typing.dataset.count = String(names.length);
}

function log(text, kind = "") {
  const item = el("li", { class: `log-item ${kind ? `log-${kind}` : ""}`, dataset: { testid: "log-item", kind } },
    el("time", { class: "log-time", text: formatClock() }), " ", el("span", { text }));
  ui.log.prepend(item);
  while (ui.log.children.length > MAX_LOG) ui.log.lastElementChild.remove();
}

// ---------------------------------------------------------------------------------------------
// Wiring

function showChat() {
  ui.joinView.hidden = true;
  ui.chatView.hidden = false;
  ui.meName.textContent = app.me.name;
  createClient();
  ui.input.focus();
}

ui.joinForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = ui.nameInput.value.trim().slice(0, 32);
  if (!name) return;
  ui.joinError.hidden = true;
  app.me.name = name;
  try {
    await getToken(); // fail here, visibly, if the server does not run in demo mode
  } catch (e) {
    ui.joinError.textContent = `Could not get a demo token: ${e.message}. Is the server running with --demo-auth?`;
    ui.joinError.hidden = false;
    return;
  }
  safeStorage(() => sessionStorage.setItem(NAME_KEY, name));
  showChat();
});

ui.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = ui.input.value.trim();
  app.room?.handle.typing.stop();
  if (!text) return;
  ui.input.value = "";
  send(text);
});
ui.input.addEventListener("input", () => {
  if (!app.room) return;
  if (ui.input.value.trim()) app.room.handle.typing.keystroke();
  else app.room.handle.typing.stop();
});
ui.input.addEventListener("blur", () => app.room?.handle.typing.stop());

ui.transportSelect.addEventListener("change", () => {
  safeStorage(() => sessionStorage.setItem(FORCE_KEY, ui.transportSelect.value));
  log(`forcing transport: ${ui.transportSelect.value}`);
  destroyClient();
  createClient();
});

ui.offlineToggle.addEventListener("click", () => {
  app.simulatedOffline = !app.simulatedOffline;
  ui.offlineToggle.setAttribute("aria-pressed", String(app.simulatedOffline));
  ui.offlineToggle.textContent = app.simulatedOffline ? "Go online" : "Go offline";
  log(app.simulatedOffline ? "simulating offline (window 'offline' event)" : "back online (window 'online' event)");
  window.dispatchEvent(new Event(app.simulatedOffline ? "offline" : "online"));
});

ui.drainButton.addEventListener("click", async () => {
  ui.drainButton.disabled = true;
  try {
    const res = await fetch("/v1/demo/drain", { method: "POST" });
    log(res.ok ? "drain requested: the server sends reconnect_after and closes every session"
      : `drain refused: HTTP ${res.status}`);
  } catch (e) {
    log(`drain failed: ${e.message}`);
  } finally {
    setTimeout(() => { ui.drainButton.disabled = false; }, 1000);
  }
});

ui.leaveButton.addEventListener("click", () => {
  destroyClient();
  safeStorage(() => sessionStorage.removeItem(NAME_KEY));
  app.me = { name: null, user: null };
  for (const r of ROOMS) app.messages.set(r, []);
  ui.chatView.hidden = true;
  ui.joinView.hidden = false;
  updateBadge({ state: "idle", transport: null, attempt: 0, retryInMs: null, reason: null });
  ui.nameInput.focus();
});

document.addEventListener("visibilitychange", () => {
  app.room?.handle.presence.set({ status: document.hidden ? "away" : "active" });
});

// ---------------------------------------------------------------------------------------------
// Start

await init();
renderRooms();
const savedName = safeStorage(() => sessionStorage.getItem(NAME_KEY));
if (savedName) {
  app.me.name = savedName;
  ui.nameInput.value = savedName;
  showChat();
} else {
  ui.nameInput.focus();
}
document.documentElement.dataset.ready = "true";
