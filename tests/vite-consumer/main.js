// Imports rtlink exactly as an app installing it from npm does, bundled by Vite.
import init, { RealtimeClient, RtlinkError } from "rtlink";

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const setStatus = (state, text = state) => {
  $("status").dataset.state = state;
  $("status").textContent = text;
};

async function main() {
  await init(); // Vite emits rtlink_bg.wasm as an asset and rewrites its URL
  const client = new RealtimeClient({
    url: location.origin,
    getToken: async () => {
      const res = await fetch("/v1/demo-token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "Vite" }),
      });
      return (await res.json()).token;
    },
  });
  client.on("state", (s) => {
    $("transport").textContent = s.transport ?? "";
    if (s.state === "open") setStatus("connected");
  });
  client.connect();

  const room = client.room("vite-consumer");
  const text = `hello from a Vite bundle ${Math.random().toString(36).slice(2, 8)}`;
  room.on("message", (m) => {
    if (m.payload?.text === text) {
      $("received").textContent = m.payload.text;
      setStatus("received", `received message at offset ${m.offset}`);
    }
  });
  room.on("subscribed", async () => {
    try {
      const { offset } = await room.publish({ text });
      $("status").dataset.publishedOffset = String(offset);
    } catch (e) {
      setStatus("error", e instanceof RtlinkError ? `publish failed: ${e.code}` : String(e));
    }
  });
}

main().catch((e) => setStatus("error", `error: ${e?.message ?? e}`));
