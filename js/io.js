// The I/O the module asks for (src/wasm/driver.rs `record`): the ticket request and the three
// transports, each reporting through `t` (js/rtlink.js `_start`): `t.report(op, text, m)` and
// `t.frame(value)` (a server frame) while it runs, `t.finish(op, text, m)` once at its end. Every
// outcome is reported from a browser callback, never from inside the function that started it.
// `stop()` (called by the client when the module closes the transport, or by `finish`) closes the
// connection, aborts every request and removes every listener: nothing outlives its transport.
// A transport's close reason reaches the app only with a terminal close code (the server's, on a
// WebSocket): the ends found here (a failed poll or upstream POST, a lost event stream, a poll
// without `welcome`) report none.
//
// Opening takes two steps: `ticket` trades the bearer token for a single-use ticket (`POST
// /v1/ticket`: browsers cannot set headers on WebSocket or EventSource; the body names the
// session to resume), then `open` connects with it. Frames are JSON text both ways: a server
// frame goes to `t.frame` parsed (js/wire.js reads its fields for the module), the module's
// client frames come to `send` as text.
import { encoder } from "./wasm.js";
import { parse } from "./wire.js";

// rt_input() operations of a transport (src/wasm/driver.rs `op`): 16 TICKET, 17 OPENED,
// 19 CLOSED, 20 FAILED (+ a reason). Why a request failed (`failure`): 0 UNAUTHORIZED,
// 1 forbidden, 2 SESSION_UNKNOWN, 3 overloaded, 4 TOO_LARGE, 5 NETWORK; the first four are the
// module's reasons as they are. Its reasons 4 and 5: no usable answer at the ticket step means the
// server is UNREACHABLE (4); at the connection it is a strike against the transport (NETWORK).
// (Written as numbers with their names beside them: a bundled module's top-level constants are
// not inlined by esbuild.)

/** Live DOM listeners and timers of every client (for `liveListeners()`). */
export const live = { n: 0 };

/** Adds `listeners` (`{ event: f }`) to `target`; returns what removes them. */
function listen(target, listeners) {
  const entries = Object.entries(listeners);
  for (const [kind, f] of entries) target.addEventListener(kind, f);
  live.n += entries.length;
  return () => {
    for (const [kind, f] of entries) target.removeEventListener(kind, f);
    live.n -= entries.length;
  };
}

/** What a refusing HTTP answer means: `{ k, ms }`, `k` a reason above, `ms` the
 * `retry_after_ms` of its JSON body, else its `Retry-After` seconds, else -1. */
function failure(status, body, retryAfter) {
  let parsed;
  try {
    parsed = JSON.parse(body);
  } catch {}
  const code = typeof parsed?.error === "string" ? parsed.error : "";
  let ms = parsed?.retry_after_ms;
  if (!(Number.isInteger(ms) && ms >= 0)) {
    const secs = retryAfter?.trim();
    ms = /^\+?\d+$/.test(secs) ? secs * 1000 : -1;
  }
  const k = status === 401 ? 0 /* UNAUTHORIZED */ : status === 403 ? 1 : status === 404 && code === "unknown_session" ? 2 /* SESSION_UNKNOWN */
    : status === 429 || status === 503 ? 3 : status === 413 ? 4 /* TOO_LARGE */ : 5 /* NETWORK */;
  return { k, ms };
}

/** `fetch`, then the body as text; rejects with a `failure` unless the answer is 2xx. */
async function request(url, init) {
  let response, body;
  try {
    response = await fetch(url, init);
  } catch {
    throw { k: 5 /* NETWORK */ };
  }
  try {
    body = await response.text();
  } catch {
    // An error answer whose body cannot be read is still that error.
    if (response.ok) throw { k: 5 /* NETWORK */ };
    body = "";
  }
  if (response.ok) return body;
  throw failure(response.status, body, response.headers.get("retry-after"));
}

const post = (body, signal, headers = { "content-type": "text/plain" }) => ({ method: "POST", headers, body, signal });
const enc = encodeURIComponent;

/** Transport `t`'s ticket step: `POST {base}/v1/ticket`. `resume` and `probe` go in the JSON
 * body (a resume token is a secret: it never appears in a URL). */
export function ticket(t, base, token, resume, probe) {
  const abort = new AbortController();
  const body = JSON.stringify(resume ? (probe ? { resume, probe: true } : { resume }) : {});
  request(`${base}/v1/ticket`, post(body, abort.signal, { authorization: `Bearer ${token}` }))
    .then((text) => {
      const ticket = JSON.parse(text).ticket;
      if (typeof ticket !== "string") throw {};
      t.finish(16 /* TICKET */, ticket);
    })
    .catch((f) => t.finish(20 /* FAILED */ + (f.k < 4 /* TOO_LARGE */ ? f.k : 4 /* UNREACHABLE */), "", f.ms));
  return { stop: () => abort.abort() };
}

/** Opens transport `t` of `kind` (1 websocket, 2 sse, 3 long polling) with its ticket. */
export function open(t, kind, base, ticket) {
  return (kind === 1 ? webSocket : kind === 2 ? eventSource : longPoll)(t, base, ticket);
}

// A constructor that refuses the URL: reported from a callback like every other outcome.
function refused(t) {
  queueMicrotask(() => t.finish(20 /* FAILED */ + 5 /* NETWORK */));
  return { stop() {} };
}

/** WebSocket: one JSON frame per text message. The module sends `hello` after `OPENED`. */
function webSocket(t, base, ticket) {
  let ws;
  try {
    ws = new WebSocket(`${base.replace(/^http/, "ws")}/v1/ws?ticket=${enc(ticket)}`);
  } catch {
    return refused(t);
  }
  let pending = [];
  const off = listen(ws, {
    open() {
      for (const text of pending) ws.send(text);
      pending = null;
      t.report(17 /* OPENED */);
    },
    message(e) {
      if (typeof e.data === "string") t.frame(parse(e.data));
    },
    // Close codes are 1000-4999; 0 is a field-less synthetic event.
    close(e) {
      if (pending) t.finish(20 /* FAILED */ + 5 /* NETWORK */);
      else t.finish(19 /* CLOSED */, e.code ? e.reason : "", e.code || 1006);
    },
  });
  return {
    send: (text) => (pending ? pending.push(text) : ws.send(text)),
    stop(code = 1000, reason = "client closed") {
      off();
      ws.close(code, reason);
    },
  };
}

/** Server-Sent Events: an EventSource down, ordered POSTs up. The EventSource's own reconnect
 * is never used: on the first error it is closed and the module decides (resume, backoff, or
 * step down the ladder), so one policy governs every transport. */
function eventSource(t, base, ticket) {
  let es;
  try {
    es = new EventSource(`${base}/v1/sse?v=1&ticket=${enc(ticket)}`);
  } catch {
    return refused(t);
  }
  let opened = false;
  const up = upstream(t, base);
  const off = listen(es, {
    open() {
      if (!opened) t.report(17 /* OPENED */);
      opened = true;
    },
    message: (e) => t.frame(parse(e.data)),
    error() {
      if (opened) t.finish(19 /* CLOSED */);
      else t.finish(20 /* FAILED */ + 5 /* NETWORK */);
    },
  });
  return {
    ...up,
    stop() {
      up.stop();
      off();
      es.close();
    },
  };
}

/** Long polling: one `GET /v1/poll?ticket` that opens the session, then a loop of held `POST
 * /v1/poll` requests down (their `text/plain` JSON body carries the resume token: it never
 * appears in a URL, and a simple request needs no CORS preflight), ordered POSTs up. Each answer
 * carries a cursor; the next request sends it back, so the server resends what a lost answer
 * carried. */
function longPoll(t, base, ticket) {
  const abort = new AbortController(), up = upstream(t, base);
  let session;
  // One poll: `[cursor, frames]`.
  const poll = (url, body) =>
    request(url, body ? post(body, abort.signal) : { signal: abort.signal }).then((text) => {
      let batch;
      try {
        batch = JSON.parse(text);
      } catch {}
      if (typeof batch !== "object" || !batch || Array.isArray(batch)) throw { k: 5 /* NETWORK */ };
      const cursor = Number.isInteger(batch.cursor) && batch.cursor >= 0 ? batch.cursor : 0;
      return [cursor, Array.isArray(batch.frames) ? batch.frames : []];
    });
  // Delivers a batch; false once the transport is finished.
  const deliver = (frames) => {
    for (const frame of frames) t.frame(frame);
    return !t.done;
  };
  const next = (cursor) =>
    poll(`${base}/v1/poll`, `{"session":${JSON.stringify(session)},"cursor":${cursor}}`).then(
      ([cursor, frames]) => deliver(frames) && next(cursor),
      (f) => t.finish(19 /* CLOSED */, "", f.k === 2 /* SESSION_UNKNOWN */ ? 4007 : 0),
    );
  poll(`${base}/v1/poll?v=1&ticket=${enc(ticket)}`).then(
    ([cursor, frames]) => {
      t.report(17 /* OPENED */);
      // The batch carries `welcome`, which gives the session (`session` below).
      if (!deliver(frames)) return;
      if (session === undefined) t.finish(19 /* CLOSED */, "", 4012);
      else next(cursor);
    },
    (f) => t.finish(20 /* FAILED */ + (f.k < 4 /* TOO_LARGE */ ? f.k : 5 /* NETWORK */), "", f.ms),
  );
  return {
    send: up.send,
    session(token, max) {
      session = token;
      up.session(token, max);
    },
    stop() {
      abort.abort();
      up.stop();
    },
  };
}

/** Client → server frames for SSE and long polling: ordered `POST /v1/send` batches. At most one
 * POST is in flight, so frames reach the server in order; frames queued meanwhile go in the next
 * bodies, each holding as many frames as fit the server's body limit (`max` bytes, from
 * `welcome`; a first frame too large for any body goes alone, and the server refuses it). Frames
 * sent before the session is known (before `welcome`) wait for it. */
function upstream(t, base) {
  const abort = new AbortController(), queue = [];
  let session, max, busy = false;
  const bytes = (s) => encoder.encode(s).length;
  const pump = () => {
    if (busy || session === undefined || !queue.length || t.done) return;
    let body = `{"session":${JSON.stringify(session)},"frames":[`;
    // The body's length with `n` frames: so far, the frames, their commas and the closing `]}`.
    let len = bytes(body) + 2, n = 0;
    for (const frame of queue) {
      const extra = bytes(frame) + (n > 0);
      if (n && len + extra > max) break;
      len += extra;
      n++;
    }
    body += `${queue.splice(0, n).join()}]}`;
    busy = true;
    request(`${base}/v1/send`, post(body, abort.signal)).then(
      () => {
        busy = false;
        pump();
      },
      // A lost upstream makes the transport unusable; the module reconnects and resends what
      // was not acknowledged.
      (f) => t.finish(19 /* CLOSED */, "", f.k === 2 /* SESSION_UNKNOWN */ ? 4007 : f.k === 4 /* TOO_LARGE */ ? 4001 : 0),
    );
  };
  return {
    send(frame) {
      queue.push(frame);
      pump();
    },
    session(token, limit) {
      session = token;
      max = limit;
      pump();
    },
    stop: () => abort.abort(),
  };
}
