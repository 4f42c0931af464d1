// End-to-end: what the package does with server frames it cannot use, in headless Chromium over a
// real WebSocket. No real server sends such frames, so a scripted one does (a few lines of
// HTTP + RFC 6455 here): it hands out tickets, accepts the WebSocket and sends what each test
// says. The frame JSON is parsed and checked by the façade (js/wire.js) and the close messages
// are written by it (js/rtlink.js), so this is where those paths meet the browser.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { ROOT, launchBrowser, waitUntil, watchConsole } from "./helpers.mjs";

const WELCOME = {
  t: "welcome", v: 1, session: "s1", resume_token: "r1", resumed: false, ping_interval_ms: 25000,
  user: { id: "u1", name: "Ada" },
  limits: {
    max_frame_bytes: 65536, rate_per_sec: 20, burst: 40, max_rooms: 64, resume_window_ms: 30000,
    dedupe_window_ms: 60000, max_batch_bytes: 69632, publish_bytes_per_sec: 0, publish_bytes_burst: 0,
  },
};

/** A text frame from the server (unmasked). */
function textFrame(text) {
  const payload = Buffer.from(text);
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x81, n])
    : n < 65536 ? Buffer.from([0x81, 126, n >> 8, n & 255]) : null;
  if (!head) throw new Error("frame too long for this test server");
  return Buffer.concat([head, payload]);
}

/** Reads the client's (masked) frames off `socket`; calls `onFrame(opcode, payload)`. */
function readFrames(socket, onFrame) {
  let buf = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      let len = buf[1] & 127, at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (buf.length < 10) return;
        len = Number(buf.readBigUInt64BE(2));
        at = 10;
      }
      if (buf.length < at + 4 + len) return;
      const mask = buf.subarray(at, at + 4);
      const payload = Buffer.from(buf.subarray(at + 4, at + 4 + len));
      for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      onFrame(buf[0] & 15, payload);
      buf = buf.subarray(at + 4 + len);
    }
  });
}

/** A scripted server: `script(n)` gives the frames (objects or raw text) the n-th WebSocket
 * (from 0) receives after the upgrade. Records the tickets handed out and the close frames the
 * client sent. Serves pkg/ and an empty page. */
async function scriptedServer(script) {
  const seen = { tickets: 0, closes: [], sockets: [] };
  const server = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/v1/ticket") {
      seen.tickets++;
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ ticket: `t${seen.tickets}` }));
    }
    const file = { "/pkg/rtlink.js": "text/javascript", "/pkg/rtlink_bg.wasm": "application/wasm" }[req.url];
    if (file) {
      res.writeHead(200, { "content-type": file });
      return res.end(readFileSync(join(ROOT, req.url)));
    }
    res.writeHead(200, { "content-type": "text/html" });
    res.end("<!doctype html><title>bad frames</title>");
  });
  server.on("upgrade", (req, socket) => {
    const n = seen.sockets.length;
    seen.sockets.push(socket);
    const accept = createHash("sha1")
      .update(`${req.headers["sec-websocket-key"]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    readFrames(socket, (opcode, payload) => {
      if (opcode !== 8) return;
      seen.closes.push({ socket: n, code: payload.length >= 2 ? payload.readUInt16BE(0) : 0, reason: payload.subarray(2).toString() });
      socket.end(Buffer.from([0x88, 0]));
    });
    socket.on("error", () => {});
    for (const f of script(n)) socket.write(textFrame(typeof f === "string" ? f : JSON.stringify(f)));
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  const base = `http://127.0.0.1:${server.address().port}`;
  const stop = () => {
    for (const s of seen.sockets) s.destroy();
    return new Promise((res) => server.close(res));
  };
  return { base, seen, stop };
}

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** Opens a page on `base` with a connected client; returns the page. The client's state changes
 * and errors collect in `window.states` and `window.errors`. */
async function connect(base) {
  const page = await browser.newPage();
  watchConsole(page, "bad-frames");
  await page.goto(`${base}/`);
  await page.evaluate(async () => {
    const m = await import("/pkg/rtlink.js");
    await m.default();
    window.states = [];
    window.errors = [];
    const c = new m.RealtimeClient({
      url: location.origin, getToken: () => "token", transports: ["websocket"], backoff: { baseMs: 50, capMs: 100 },
    });
    c.on("state", (s) => window.states.push({ ...s }));
    c.on("error", (e) => window.errors.push({ code: e.code, message: e.message }));
    c.connect();
  });
  return page;
}

test("a frame missing a field closes the WebSocket with 4000 and the client reconnects", async () => {
  const server = await scriptedServer((n) => (n === 0 ? [WELCOME, { t: "message", room: "r" }] : [WELCOME]));
  try {
    const page = await connect(server.base);
    await waitUntil(() => server.seen.sockets.length >= 2 && page.evaluate(() => window.states.at(-1)?.state === "open"),
      { what: "the second connection open" });
    assert.deepEqual(server.seen.closes[0], { socket: 0, code: 4000, reason: "malformed frame from server" });
    const states = await page.evaluate(() => window.states.map((s) => s.state));
    const firstOpen = states.indexOf("open");
    assert.ok(firstOpen >= 0 && states.indexOf("backing-off", firstOpen) > firstOpen, `states: ${states}`);
    assert.ok(!states.includes("closed"), `states: ${states}`);
    assert.deepEqual(await page.evaluate(() => window.errors), []);
    await page.close();
  } finally {
    await server.stop();
  }
});

test("text that is no JSON and an unknown frame type: the first closes the transport, the second is ignored", async () => {
  const server = await scriptedServer((n) => (n === 0 ? [WELCOME, { t: "later", x: [1.5, {}] }, "{not json"] : [WELCOME]));
  try {
    const page = await connect(server.base);
    await waitUntil(() => server.seen.sockets.length >= 2 && page.evaluate(() => window.states.at(-1)?.state === "open"),
      { what: "the second connection open" });
    // Only the text that is no JSON closed the first connection.
    assert.deepEqual(server.seen.closes, [{ socket: 0, code: 4000, reason: "malformed frame from server" }]);
    assert.deepEqual(await page.evaluate(() => window.errors), []);
    await page.close();
  } finally {
    await server.stop();
  }
});

test("a welcome of another protocol version ends the client with unsupported_version", async () => {
  const server = await scriptedServer(() => [{ ...WELCOME, v: 2 }]);
  try {
    const page = await connect(server.base);
    await waitUntil(() => page.evaluate(() => window.states.at(-1)?.state === "closed"), { what: "the client closed" });
    const message = "server closed (4002 unsupported_version): the server speaks another protocol version";
    assert.equal(await page.evaluate(() => window.states.at(-1).reason), message);
    assert.deepEqual(await page.evaluate(() => window.errors), [{ code: "unsupported_version", message }]);
    assert.deepEqual(server.seen.closes, [{ socket: 0, code: 4000, reason: "malformed frame from server" }]);
    assert.equal(server.seen.tickets, 1, "no reconnect after a terminal close");
    await page.close();
  } finally {
    await server.stop();
  }
});
