// rtlink's public API: a thin façade over the wasm module (the Rust state machine in src/core
// behind the boundary in src/wasm). This file owns what JS does best and costs least here: the
// API objects, option checks, the app's listeners, the event objects, the calls to `getToken`,
// `sessionStorage` and the page's lifecycle events, and the I/O the module asks for (js/io.js:
// the transports and the one timer; js/wire.js: frames as JSON). The module is driven through
// one export, `rt_input(driver, op, strings, n, m, now)`, and reports through one import,
// `r(code, a, b, c, d, x, y)`; both tables are documented in src/wasm/driver.rs.
//
// Nothing here assumes a `window`: globals are read from `globalThis` (a page or a worker).
import init, { exports, initSync, input } from "./wasm.js";
import { live, open, ticket } from "./io.js";
import { read, write } from "./wire.js";

export { init as default, initSync };

/** The one error type rtlink throws or rejects with. `code` is stable and machine-readable. */
export class RtlinkError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RtlinkError";
    this.code = code;
  }
}

// rt_input() operations (src/wasm/driver.rs `op`), written as numbers with their names beside
// them (esbuild does not inline a bundled module's top-level constants): 0 CONNECT, 1 CLOSE,
// 2 SUBSCRIBE, 3 UNSUBSCRIBE, 4 SET_PRESENCE, 5 KEYSTROKE, 6 TYPING_STOP, 7 PUBLISH, 8 TOKEN,
// 9 ONLINE, 10 OFFLINE, 11 HIDDEN, 12 VISIBLE, 13 FROZEN, 14 RESUMED, 15 TIMEOUT, 18 FRAME,
// 19 CLOSED; the transports' in js/io.js.

const TRANSPORTS = ["websocket", "sse", "long-polling"];
const STATES = ["idle", "connecting", "open", "backing-off", "offline", "closed"];
// PUBLISH refusals (returned negated), by number.
// The names of the close codes that end a client (CloseCode::action in protocol/src/close_code.rs:
// only terminal ones do), for the message of a closed state.
const TERMINAL = { 1000: "normal", 4002: "unsupported_version", 4010: "forbidden", 4013: "disconnected" };
const REFUSALS = [, ["queue_full", "the send queue is full; nothing was dropped"],
  ["not_subscribed", "leave() was called on this room"], ["too_large", "payload is larger than the server allows"],
  ["closed", "the client is closed"]];

const g = globalThis;
// Connected clients: a connected client stays alive like an open WebSocket does, even when the
// app keeps no reference to it.
const connected = new Set();
// A client the app dropped (never connected, or closed) frees its driver in the module.
const drivers = new FinalizationRegistry((driver) => exports().rt_free(driver));

/** Live DOM listeners and timers of every client (for leak checks). */
export function liveListeners() {
  return live.n;
}

const invalid = (message) => new RtlinkError("invalid_options", message);

/** `JSON.parse(text)`, the text itself when it is not JSON (another publisher), null when empty. */
function json(text) {
  if (text === "") return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function ms(options, key, path) {
  const v = options[key];
  if (v === undefined || v === null) return -1;
  if (typeof v !== "number" || !(v >= 0 && v <= 86_400_000)) {
    throw invalid(`${path} must be a number of milliseconds between 0 and 86400000`);
  }
  return v;
}

function eventName(allowed, event) {
  if (!allowed.includes(event)) {
    throw new RtlinkError("invalid_argument", `unknown event "${event}"; expected one of: ${allowed.join(", ")}`);
  }
  return event;
}

/** `getItem`/`setItem` on sessionStorage, or nothing where storage is missing or refused. */
function storage(f) {
  try {
    const s = g.sessionStorage;
    return s ? f(s) : null;
  } catch {
    return null;
  }
}

// The page lifecycle as module inputs: online/offline, visibility, back/forward cache
// (`pagehide`/`pageshow`) and freeze/resume where the browser has them. A worker has
// online/offline only.
function lifecycle(client) {
  const input = (op) => client._input(op);
  const doc = g.document;
  const listeners = [
    [g, "online", () => input(9 /* ONLINE */)],
    [g, "offline", () => input(10 /* OFFLINE */)],
  ];
  if (doc) {
    listeners.push(
      // A page entering the back/forward cache must not hold a connection; `persisted` tells
      // whether it may come back.
      [g, "pagehide", (e) => e.persisted && input(13 /* FROZEN */)],
      [g, "pageshow", (e) => e.persisted && input(14 /* RESUMED */)],
      [doc, "visibilitychange", () => input(doc.hidden ? 11 /* HIDDEN */ : 12 /* VISIBLE */)],
      // Page Lifecycle API (Chromium): frozen tabs run no timers or network.
      [doc, "freeze", () => input(13 /* FROZEN */)],
      [doc, "resume", () => input(14 /* RESUMED */)],
    );
  }
  const added = listeners.filter(([target]) => target && target.addEventListener);
  for (const [target, kind, f] of added) target.addEventListener(kind, f);
  live.n += added.length;
  return () => {
    for (const [target, kind, f] of added) target.removeEventListener(kind, f);
    live.n -= added.length;
  };
}

/** The connection to one rtlink server. */
export class RealtimeClient {
  constructor(options) {
    if (typeof options !== "object" || options === null) {
      throw invalid("options must be an object with `url` and `getToken`");
    }
    // Several URLs: the nodes to fail over between, preferred first (src/core/endpoints.rs).
    const urls = [].concat(options.url).map((u) => typeof u === "string" && u.replace(/\/+$/, ""));
    if (!urls.length || !urls.every((u) => /^https?:\/\/[^ ]+$/.test(u))) {
      throw invalid("`url` must be the server's base URL (http:// or https://) or a non-empty array of them");
    }
    const url = urls.join(" ");
    if (typeof options.getToken !== "function") {
      throw invalid("`getToken` must be a function returning a token or a promise of one");
    }
    let ladder = 0;
    if (options.transports !== undefined) {
      if (!Array.isArray(options.transports)) throw invalid("`transports` must be an array");
      const kinds = [];
      for (const name of options.transports) {
        const kind = TRANSPORTS.indexOf(name) + 1;
        if (!kind) {
          throw invalid(`unknown transport "${typeof name === "string" ? name : ""}": use "websocket", "sse" or "long-polling"`);
        }
        if (!kinds.includes(kind)) kinds.push(kind);
      }
      if (!kinds.length) throw invalid("`transports` must name at least one transport");
      ladder = kinds.reduceRight((n, kind) => n * 4 + kind, 0);
    }
    let base = -1, cap = -1, attempts = -1, grace = -1;
    const backoff = options.backoff;
    if (typeof backoff === "object" && backoff !== null) {
      base = ms(backoff, "baseMs", "backoff.baseMs");
      cap = ms(backoff, "capMs", "backoff.capMs");
      if (base >= 0) base = Math.max(base, 1);
      if (cap >= 0) cap = Math.max(cap, 1);
      const max = backoff.maxAttempts;
      if (max !== undefined && max !== null) {
        if (!(Number.isInteger(max) && max >= 1 && max <= 1e9)) {
          throw invalid("backoff.maxAttempts must be a positive integer or null");
        }
        attempts = max;
      }
    }
    if (typeof options.heartbeat === "object" && options.heartbeat !== null) {
      grace = ms(options.heartbeat, "graceMs", "heartbeat.graceMs");
    }
    let probe = ms(options, "probeIntervalMs", "probeIntervalMs");
    // A probe opens a second connection: more often than once a second is a storm.
    if (probe >= 0) probe = Math.max(probe, 250);
    const remember = options.rememberTransport !== false;
    const key = `rtlink:transport:${url}`;
    const start = remember ? TRANSPORTS.indexOf(storage((s) => s.getItem(key))) + 1 : 0;
    const seed = new Uint32Array(2);
    if (g.crypto) g.crypto.getRandomValues(seed);
    else seed.set([Math.random() * 2 ** 32, Date.now()]);

    this._getToken = options.getToken;
    this._remember = remember && key;
    this._listeners = [];
    this._pending = new Map();
    this._presence = new Map();
    this._typing = new Map();
    this._list = [];
    this._state = { state: "idle", transport: null, attempt: 0, retryInMs: null, reason: null };
    this._closed = false;
    this._urls = urls;
    // Transports (and ticket requests) by id, the timer, and the records of the module not yet
    // handled (see `_input`).
    this._io = new Map();
    this._timer = 0;
    this._queue = [];
    this._push = (...record) => this._queue.push(record);
    this._busy = false;
    this._driver = exports().rt_new(ladder, start, base, cap, attempts, grace, probe, urls.length, seed[0], seed[1], performance.now());
    drivers.register(this, this._driver, this);
  }

  // One operation of the module (src/wasm/driver.rs `op`). Its records are queued while it runs
  // and handled after it returned, in order: app listeners and transports may call in again
  // (their records join the queue; the outermost call handles them).
  _input(op, strings = [], n = 0, m = 0) {
    if (!this._driver) return -4;
    const result = input(this._push, this._driver, op, strings, n, m);
    if (!this._busy) {
      this._busy = true;
      try {
        while (this._queue.length) this._record(...this._queue.shift());
      } finally {
        this._busy = false;
      }
    }
    return result;
  }

  _on(scope, event, listener) {
    const entry = { scope, event, listener };
    this._listeners.push(entry);
    // Calling it twice is harmless.
    return () => {
      this._listeners = this._listeners.filter((e) => e !== entry);
    };
  }

  // A throwing listener is reported and does not stop the others.
  _emit(scope, event, value) {
    for (const e of this._listeners.slice()) {
      if (e.scope === scope && e.event === event) {
        try {
          e.listener(value);
        } catch (err) {
          console.error("rtlink: listener threw", err);
        }
      }
    }
  }

  // One record from the module (src/wasm/driver.rs `record`).
  _record(code, a, b, c, d, x, y) {
    const extra = code >> 5;
    switch (code & 31) {
      case 0: // STATE
        // Closed for good: whatever transport is left goes too.
        if (extra >> 2 === 5) for (const id of this._io.keys()) this._stop(id);
        this._state = {
          state: STATES[extra >> 2],
          transport: TRANSPORTS[(extra & 3) - 1] ?? null,
          attempt: x,
          retryInMs: y < 0 ? null : y,
          reason: extra >> 2 === 5 ? this._why : null,
        };
        return this._emit("", "state", this._state);
      case 1: // MESSAGE
        return this._emit(a, "message", { room: a, offset: x, sender: b, name: extra ? c : null, payload: json(d) });
      case 2: // ACKED
        return this._settle(x, 0, { offset: y });
      case 3: // FAILED
        return this._settle(x, 1, new RtlinkError(a, b));
      case 4: // SUBSCRIBED
        return this._emit(a, "subscribed", { room: a });
      case 5: // RESYNC
        return this._emit(a, "resync", { room: a });
      case 6: // REFUSED
        return this._emit(a, "error", new RtlinkError(b, `subscribe to "${a}" refused: ${c}`));
      case 7: // MEMBER
        return void this._list.push({ user: a, name: b, meta: json(c), connections: x });
      case 9: // TYPIST
        return void this._list.push({ user: a, name: b });
      case 8: // PRESENCE
      case 10: { // TYPING
        const list = this._list;
        this._list = [];
        const presence = (code & 31) === 8;
        (presence ? this._presence : this._typing).set(a, list);
        return this._emit(a, presence ? "presence" : "typing", list.slice());
      }
      case 11: { // TRANSPORT
        const name = TRANSPORTS[extra - 1];
        if (this._remember) storage((s) => s.setItem(this._remember, name));
        return this._emit("", "transport", name);
      }
      case 12: // ERROR
        this._emit("", "error", new RtlinkError(a, this._why));
        return this._shutdown();
      case 13: // TOKEN: asked in a microtask, so app code never runs inside the module's call.
        return void Promise.resolve()
          .then(() => (0, this._getToken)())
          .then((token) => (typeof token === "string" ? token : ""), () => "")
          .then((token) => this._input(8 /* TOKEN */, [token]));
      case 14: // FETCH_TICKET
        return this._start(x, (t) => ticket(t, this._urls[extra >> 1], a, b, extra & 1));
      case 15: // OPEN
        return this._start(x, (t) => open(t, extra & 3, this._urls[extra >> 2], a));
      case 16: // SEND
        return this._io.get(x)?.send(write(extra, a, b, c, y));
      case 17: // CLOSE
        return this._stop(x, y, a);
      case 18: // TIMER
        if (this._timer) {
          clearTimeout(this._timer);
          live.n--;
          this._timer = 0;
        }
        if (x >= 0) {
          live.n++;
          this._timer = setTimeout(() => {
            this._timer = 0;
            live.n--;
            this._input(15 /* TIMEOUT */);
          }, x);
        }
        return;
      case 19: // REASON: why the client closed (src/core/state.rs `CloseReason`).
        this._why = [
          "client closed",
          `server closed (${x} ${TERMINAL[x] ?? "unknown"}): ${a}`,
          "unauthorized: the server refused a fresh token",
          "forbidden: this origin or user is not allowed",
          "getToken failed",
          `gave up after ${x} attempts`,
        ][extra];
    }
  }

  // Starts transport `id` (or its ticket request): `make(t)` gets what it reports through and
  // returns `{ send, session, stop }`. `t.report(op, text, m)` feeds the module (nothing once
  // stopped); `t.finish(op, text, m)` reports its end once and stops it; `t.frame(value)` feeds
  // it a server frame (parsed; undefined if its text is no JSON).
  _start(id, make) {
    this._stop(id);
    const t = {
      done: false,
      report: (op, text = "", m = 0) => t.done || this._input(op, [text], id, m),
      finish: (op, text = "", m = 0) => {
        if (!t.done) {
          this._stop(id);
          this._input(op, [text], id, m);
        }
      },
      frame: (value) => {
        if (t.done) return;
        const [kind, fields, session] = read(value);
        if (kind < 0) {
          // A frame the client cannot use ends the transport, as a close of that code would.
          this._stop(id, 4000, "malformed frame from server");
          this._input(19 /* CLOSED */, [fields], id, -kind);
        } else {
          // A `welcome`: the upstream (SSE, long polling) learns its session first.
          if (session) t.session?.(...session);
          this._input(18 /* FRAME */, fields, id, kind);
        }
      },
    };
    this._io.set(id, t);
    Object.assign(t, make(t));
  }

  // Stops transport `id`: closes its connection, aborts its requests, removes its listeners.
  _stop(id, code, reason) {
    const t = this._io.get(id);
    if (t) {
      this._io.delete(id);
      t.done = true;
      t.stop(code, reason);
    }
  }

  _settle(id, failed, value) {
    const pending = this._pending.get(id);
    if (pending) {
      this._pending.delete(id);
      pending[failed](value);
    }
  }

  /** Drops the page listeners and the keep-alive; rejects what is still pending. */
  _shutdown() {
    this._closed = true;
    connected.delete(this);
    this._unlisten?.();
    this._unlisten = null;
    for (const [, reject] of this._pending.values()) reject(new RtlinkError("closed", "the client was closed"));
    this._pending.clear();
  }

  on(event, listener) {
    return this._on("", eventName(["state", "error", "transport"], event), listener);
  }

  connect() {
    if (!this._closed) {
      connected.add(this);
      this._unlisten ??= lifecycle(this);
    }
    this._input(0 /* CONNECT */);
  }

  close() {
    this._input(1 /* CLOSE */);
    this._shutdown();
    this._listeners = [];
  }

  room(name, options) {
    if (typeof name !== "string" || !/^[A-Za-z0-9_.:-]{1,128}$/.test(name)) {
      throw new RtlinkError("invalid_room", `room name "${name}" must be 1-128 characters of A-Z a-z 0-9 _ . : -`);
    }
    let history = 0;
    if (options !== undefined && options !== null) {
      if (typeof options !== "object") throw new RtlinkError("invalid_argument", "room options must be an object");
      const h = options.history;
      if (h !== undefined && h !== null) {
        if (!(Number.isInteger(h) && h >= 0 && h <= 10_000)) {
          throw new RtlinkError("invalid_argument", "history must be a whole number from 0 to 10000");
        }
        history = h;
      }
    }
    this._input(2 /* SUBSCRIBE */, [name], history);
    return new Room(this, name);
  }

  get state() {
    return this._state;
  }

  /** Closes the client and frees its module memory now rather than when it is collected. */
  free() {
    this.close();
    if (this._driver) {
      drivers.unregister(this);
      exports().rt_free(this._driver);
      this._driver = null;
    }
  }
}

/** JSON text of a value the API accepts as JSON, or undefined. */
function jsonText(value) {
  try {
    return value === undefined ? undefined : JSON.stringify(value);
  } catch {
    return undefined;
  }
}

/** A room of a client. Handles are cheap; several handles of one room share its state. */
export class Room {
  constructor(client, name) {
    this._c = client;
    this.name = name;
  }

  on(event, listener) {
    return this._c._on(this.name, eventName(["message", "subscribed", "resync", "error"], event), listener);
  }

  publish(payload) {
    const text = jsonText(payload);
    if (text === undefined) {
      return Promise.reject(new RtlinkError("invalid_argument", "payload must be JSON-serialisable"));
    }
    return new Promise((resolve, reject) => {
      const id = this._c._input(7 /* PUBLISH */, [this.name, text]);
      if (id > 0) this._c._pending.set(id, [resolve, reject]);
      else reject(new RtlinkError(...REFUSALS[-id]));
    });
  }

  leave() {
    this._c._input(3 /* UNSUBSCRIBE */, [this.name]);
  }

  get presence() {
    return new Presence(this._c, this.name);
  }

  get typing() {
    return new Typing(this._c, this.name);
  }

  free() {}
}

/** Who is in a room. */
export class Presence {
  constructor(client, room) {
    this._c = client;
    this._room = room;
  }

  set(meta) {
    const text = jsonText(meta);
    if (text === undefined) throw new RtlinkError("invalid_argument", "presence metadata must be JSON-serialisable");
    this._c._input(4 /* SET_PRESENCE */, [this._room, text]);
  }

  list() {
    return (this._c._presence.get(this._room) ?? []).slice();
  }

  on(event, listener) {
    eventName(["change"], event);
    return this._c._on(this._room, "presence", listener);
  }

  free() {}
}

/** Who is typing in a room, and this user's own typing signal. */
export class Typing {
  constructor(client, room) {
    this._c = client;
    this._room = room;
  }

  keystroke() {
    this._c._input(5 /* KEYSTROKE */, [this._room]);
  }

  stop() {
    this._c._input(6 /* TYPING_STOP */, [this._room]);
  }

  list() {
    return (this._c._typing.get(this._room) ?? []).slice();
  }

  on(event, listener) {
    eventName(["change"], event);
    return this._c._on(this._room, "typing", listener);
  }

  free() {}
}
