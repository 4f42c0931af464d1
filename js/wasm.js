// Loads rtlink_bg.wasm and moves strings across its boundary (src/wasm/mod.rs): the module has
// four exports (rt_new, rt_buf, rt_input, rt_free) and one import, `rt.r`, through which it
// reports records. `init` and `initSync` take what wasm-bindgen's loader took (rtlink.d.ts).
let wasm;
export const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Where the records of the running call go: `(code, a, b, c, d, x, y)`. */
let sink;

const text = (at, len) => (len ? decoder.decode(new Uint8Array(wasm.memory.buffer, at, len)) : "");
const imports = {
  rt: { r: (code, a, al, b, bl, c, cl, d, dl, x, y) => sink(code, text(a, al), text(b, bl), text(c, cl), text(d, dl), x, y) },
};

// `{ module_or_path }` / `{ module }`, or the value itself (deprecated, still accepted).
const unwrap = (v, key) => (v !== undefined && Object.getPrototypeOf(v) === Object.prototype ? v[key] : v);

function ready(instance) {
  wasm ??= instance.exports;
  return wasm;
}

export function initSync(module) {
  if (wasm) return wasm;
  module = unwrap(module, "module");
  if (!(module instanceof WebAssembly.Module)) module = new WebAssembly.Module(module);
  return ready(new WebAssembly.Instance(module, imports));
}

export default async function init(input) {
  if (wasm) return wasm;
  input = unwrap(input, "module_or_path") ?? new URL("rtlink_bg.wasm", import.meta.url);
  if (typeof input === "string" || input instanceof URL || (typeof Request === "function" && input instanceof Request)) {
    input = fetch(input);
  }
  input = await input;
  let result;
  if (typeof Response === "function" && input instanceof Response) {
    if (!input.ok) throw new Error(`failed to fetch Wasm: ${input.status} ${input.statusText} fetching '${input.url}'`);
    // Streaming needs the `application/wasm` type; other servers get the slower path.
    result = await WebAssembly.instantiateStreaming?.(input.clone(), imports).catch(() => null);
    result ??= await WebAssembly.instantiate(await input.arrayBuffer(), imports);
  } else {
    result = await WebAssembly.instantiate(input, imports);
  }
  return ready(result.instance ?? result);
}

/** The module's exports, once `init` or `initSync` ran. */
export function exports() {
  if (!wasm) throw new Error("rtlink: call `await init()` before using the client");
  return wasm;
}

/** `rt_input(driver, op, strings, n, m, now)`, reporting its records to `to`. The strings go
 * into the module's input buffer as UTF-8, each followed by a 0xFF byte (which UTF-8 never uses). */
export function input(to, driver, op, strings, n, m) {
  // At most 3 bytes of UTF-8 per UTF-16 unit.
  let len = 0;
  for (const s of strings) len += s.length * 3 + 1;
  if (len) {
    // (`rt_buf` may grow the memory: its buffer is read after.)
    const at = wasm.rt_buf(driver, len);
    const mem = new Uint8Array(wasm.memory.buffer, at, len);
    len = 0;
    for (const s of strings) {
      len += encoder.encodeInto(s, mem.subarray(len)).written;
      mem[len++] = 255;
    }
  }
  sink = to;
  const result = wasm.rt_input(driver, op, len, n, m, performance.now());
  sink = null;
  return result;
}
