// The browser tests drive the package exactly as an app gets it: pkg/rtlink.js (the façade and
// its wasm module, as `make package` builds them), loaded from the crate root, which the
// wasm-bindgen test runner serves beside its own files.
let rtlink = null;

export async function load() {
  if (!rtlink) {
    const module = await import("/pkg/rtlink.js");
    await module.default();
    rtlink = module;
  }
}

function loaded() {
  if (!rtlink) throw new Error("call browser_util::ready().await first (it loads pkg/rtlink.js)");
  return rtlink;
}

export function newClient(options) {
  return new (loaded().RealtimeClient)(options);
}

export function liveListeners() {
  return loaded().liveListeners();
}
