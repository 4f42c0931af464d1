// Writes pkg/package.json: name, version (from Cargo.toml), entry points, files, sideEffects and
// metadata.
import { readFileSync, writeFileSync } from "node:fs";

const version = readFileSync("Cargo.toml", "utf8").match(/\[package\][^[]*?\nversion = "([^"]+)"/)?.[1];
if (!version) throw new Error("no [package] version in Cargo.toml");

const pkg = {
  name: "rtlink",
  version,
  description: "Realtime client for the browser: WebSocket, SSE and long-polling fallback, resume without loss, presence and typing. Rust compiled to WebAssembly.",
  license: "MIT OR Apache-2.0",
  repository: { type: "git", url: "https://github.com/rtlink/rtlink" },
  type: "module",
  main: "rtlink.js",
  module: "rtlink.js",
  types: "rtlink.d.ts",
  exports: { ".": { types: "./rtlink.d.ts", import: "./rtlink.js" }, "./rtlink_bg.wasm": "./rtlink_bg.wasm" },
  files: ["rtlink_bg.wasm", "rtlink.js", "rtlink.js.map", "rtlink.d.ts", "README.md"],
  sideEffects: false,
  keywords: ["realtime", "websocket", "sse", "long-polling", "presence", "wasm"],
};
writeFileSync("pkg/package.json", `${JSON.stringify(pkg, null, 2)}\n`);
console.log(`pkg/package.json: ${pkg.name}@${pkg.version}`);
