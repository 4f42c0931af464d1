// Frames as JSON text, both ways (docs/PROTOCOL.md "Frames"). JSON stays out of the wasm module:
// `JSON.parse` and `JSON.stringify` are free here, a JSON reader and writer in the module were
// 3.3 KB gzip (this file is 1 KB). The module reads and writes frames as flat field lists instead
// (src/core/wire.rs has the same tables): `read` turns a parsed server frame into its kind and
// fields, checking every field the client reads; `write` turns a client frame record of the
// module into the JSON text the server's codec reads (byte for byte what serde writes).

// Server frame kinds, by `t` (src/core/wire.rs `server_frame`); any other `t` is unknown.
const KINDS = ["welcome", "ping", "pong", "subscribed", "unsubscribed", "message", "ack", "nack",
  "presence_snapshot", "presence_join", "presence_update", "presence_leave", "presence_diff", "typing",
  "reconnect_after", "close"];
const MALFORMED = "malformed frame from server";

/** `JSON.parse(text)`, undefined if it is no JSON. */
export function parse(text) {
  try {
    return JSON.parse(text);
  } catch {}
}

/** Server frame `f` (what `JSON.parse` made of its text; undefined if it did not parse) as
 * `[kind, fields, session]`: every field a string (numbers in decimal, booleans "1" or ""), in
 * the order the module reads them, and for a `welcome` the session its transport's upstream needs
 * (`[resume token, largest body]`). A frame the client cannot use is `[-close code, reason]`: a
 * frame that is no object, or whose first field read in that order is missing or of the wrong
 * type, is malformed (4000); a `welcome` of another protocol version is 4002. Unknown fields are
 * ignored; an unknown `t` is kind `KINDS.length` with no fields. */
export function read(f) {
  const out = [];
  let at = f;
  const field = (key, ok, lenient, none) => {
    const v = at?.[key];
    if (ok(v)) return v;
    if (lenient) return none;
    throw key;
  };
  const isStr = (v) => typeof v === "string";
  // Whole numbers a JS number holds exactly, -0 excluded.
  const isNum = (v) => Number.isSafeInteger(v) && 1 / v > 0;
  const s = (key, lenient) => out.push(field(key, isStr, lenient, ""));
  const n = (key, lenient) => out.push(`${field(key, isNum, lenient, 0)}`);
  const b = (key) => out.push(field(key, (v) => typeof v === "boolean") ? "1" : "");
  const isObj = (v) => typeof v === "object" && v && !Array.isArray(v);
  const obj = (key) => field(key, isObj);
  // An array field: its length, then each element's fields. Absent is missing; any other
  // non-array reads as empty.
  const list = (key, each) => {
    const items = field(key, (v) => v !== undefined);
    const all = Array.isArray(items) ? items : [];
    out.push(`${all.length}`);
    for (at of all) each();
    at = f;
  };
  const conn = () => {
    s("session");
    s("user");
    s("name");
    s("meta", 1);
  };
  try {
    if (!isObj(f)) throw "";
    const kind = KINDS.indexOf(field("t", isStr));
    switch (kind) {
      case 0: {
        if (field("v", isNum) !== 1) return [-4002, "the server speaks another protocol version"];
        const user = obj("user"), limits = obj("limits");
        s("session");
        s("resume_token");
        b("resumed");
        n("ping_interval_ms");
        at = user;
        s("id");
        s("name");
        at = limits;
        for (const key of ["max_frame_bytes", "rate_per_sec", "burst", "max_rooms", "resume_window_ms"]) n(key);
        for (const key of ["dedupe_window_ms", "max_batch_bytes", "publish_bytes_per_sec", "publish_bytes_burst"]) n(key, 1);
        // A server that does not announce its body limit accepts at least one frame's worth.
        return [kind, out, [out[1], +out[12] || +out[6] || 65536]];
      }
      case 3:
        s("room");
        n("head");
        b("recovered");
        s("epoch", 1);
        break;
      case 4:
        s("room");
        break;
      case 5:
        s("room");
        n("offset");
        s("sender");
        out.push(isStr(at.name) ? "1" : "");
        s("name", 1);
        s("payload");
        break;
      case 6:
        s("id");
        s("room");
        n("offset");
        break;
      case 7:
        s("id");
        s("code");
        s("reason", 1);
        break;
      case 8:
        s("room");
        list("conns", conn);
        break;
      case 9:
      case 10:
        s("room");
        at = obj("conn");
        conn();
        break;
      case 11:
        s("room");
        s("session");
        s("user");
        break;
      case 12:
        s("room");
        list("joins", conn);
        list("leaves", () => {
          s("session");
          s("user");
        });
        break;
      case 13:
        s("room");
        s("user");
        s("name");
        b("active");
        break;
      case 14:
        n("min_ms");
        n("max_ms");
        break;
      case 15:
        n("code");
        s("reason", 1);
        break;
    }
    return [kind < 0 ? KINDS.length : kind, out];
  } catch (key) {
    return [-4000, key ? `${MALFORMED}: missing or invalid field ${key}` : MALFORMED];
  }
}

// Client frame kinds (src/core/wire.rs `client_record`).
const CLIENT = ["hello", "ping", "pong", "subscribe", "unsubscribe", "publish", "presence", "typing", "switch", "close"];

/** The JSON text of the module's client frame record: `kind` (its low 4 bits; bit 4 set: the
 * optional string is present, or `active`), strings `a`, `b`, `c`, number `y` (-1: absent).
 * Absent optional members are left out, as the server's codec leaves them out. */
export function write(kind, a, b, c, y) {
  const f = { t: CLIENT[kind & 15] }, flag = kind > 15;
  switch (kind & 15) {
    case 0:
      f.v = y;
      if (flag) f.resume = a;
      break;
    case 3:
      f.room = a;
      if (y >= 0) f.since = y;
      if (flag) f.epoch = b;
      if (c) f.history = +c;
      break;
    case 4:
      f.room = a;
      break;
    case 5:
      Object.assign(f, { room: a, id: b, payload: c });
      break;
    case 6:
      Object.assign(f, { room: a, meta: b });
      break;
    case 7:
      Object.assign(f, { room: a, active: flag });
      break;
    case 9:
      Object.assign(f, { code: y, reason: a });
  }
  return JSON.stringify(f);
}
