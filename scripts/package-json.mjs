// Completes pkg/package.json after wasm-pack: name, entry points, files, sideEffects, metadata,
// and re-exports RtlinkError from the entry module so `instanceof RtlinkError` works for users.
import { readFileSync, writeFileSync, readdirSync, existsSync } from "node:fs";

const pkg = JSON.parse(readFileSync("pkg/package.json", "utf8"));
const snippetDir = readdirSync("pkg/snippets").find((d) => existsSync(`pkg/snippets/${d}/js/rtlink_error.js`));
if (!snippetDir) throw new Error("rtlink_error.js snippet not found in pkg/snippets");
const errorModule = `./snippets/${snippetDir}/js/rtlink_error.js`;

const entry = readFileSync("pkg/rtlink.js", "utf8");
if (!entry.includes("export { RtlinkError }")) {
  writeFileSync("pkg/rtlink.js", `${entry}\nexport { RtlinkError } from "${errorModule}";\n`);
}

// wasm-bindgen's InitOutput lists the raw wasm exports typed `any`; apps never call them, so the
// public .d.ts keeps only the memory and stays free of `any`.
const dts = readFileSync("pkg/rtlink.d.ts", "utf8");
const trimmed = dts.replace(
  /export interface InitOutput \{[\s\S]*?\n\}/,
  "export interface InitOutput {\n    readonly memory: WebAssembly.Memory;\n}",
);
if (/\bany\b/.test(trimmed.replace(/\/\*[\s\S]*?\*\//g, ""))) throw new Error("pkg/rtlink.d.ts still mentions `any`");
writeFileSync("pkg/rtlink.d.ts", trimmed);

Object.assign(pkg, {
  name: "rtlink",
  description: "Realtime client for the browser: WebSocket, SSE and long-polling fallback, resume without loss, presence and typing. Rust compiled to WebAssembly.",
  license: "MIT OR Apache-2.0",
  repository: { type: "git", url: "https://github.com/rtlink/rtlink" },
  type: "module",
  main: "rtlink.js",
  module: "rtlink.js",
  types: "rtlink.d.ts",
  exports: { ".": { types: "./rtlink.d.ts", import: "./rtlink.js" }, "./rtlink_bg.wasm": "./rtlink_bg.wasm" },
  files: ["rtlink_bg.wasm", "rtlink.js", "rtlink.d.ts", "rtlink_bg.wasm.d.ts", "snippets/", "README.md"],
  sideEffects: false,
  keywords: ["realtime", "websocket", "sse", "long-polling", "presence", "wasm"],
});
writeFileSync("pkg/package.json", `${JSON.stringify(pkg, null, 2)}\n`);
console.log(`pkg/package.json: ${pkg.name}@${pkg.version}`);
