// The rtlink client in a dedicated Worker or a SharedWorker (tests/browser_scopes.rs): no
// `window`, no `document`; the package takes its clock, fetch, crypto and timers from the
// worker's global scope. The page sends `{url, name, room}`; the worker connects, joins the
// room, publishes `worker-1..3` once open, and reports everything back as plain messages.
async function run(port, { url, name, room }) {
  const say = (m) => port.postMessage(m);
  say({ type: "scope", window: typeof window, document: typeof document, shared: "onconnect" in self });
  try {
    const { default: init, RealtimeClient } = await import("/pkg/rtlink.js");
    await init();
    const getToken = async () => {
      const r = await fetch(`${url}/v1/demo-token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name }),
      });
      return (await r.json()).token;
    };
    const client = new RealtimeClient({ url, getToken, rememberTransport: false });
    const r = client.room(room);
    r.on("message", (m) => say({ type: "message", payload: m.payload, offset: m.offset }));
    r.on("subscribed", () => {
      say({ type: "subscribed" });
      for (let n = 1; n <= 3; n++) {
        r.publish(`worker-${n}`).then((a) => say({ type: "acked", n, offset: a.offset }), (e) => say({ type: "failed", n, code: e.code }));
      }
    });
    client.on("state", (s) => say({ type: "state", state: s.state, transport: s.transport }));
    client.on("error", (e) => say({ type: "error", code: e.code, message: e.message }));
    client.connect();
  } catch (e) {
    say({ type: "error", code: "exception", message: String(e && e.stack || e) });
  }
}

if ("onconnect" in self) {
  self.onconnect = (e) => {
    const port = e.ports[0];
    port.onmessage = (m) => run(port, m.data);
  };
} else {
  self.onmessage = (m) => run(self, m.data);
}
