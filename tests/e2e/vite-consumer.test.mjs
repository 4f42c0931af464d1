// A real consumer: `npm pack` the built package, install the tarball into a copy of
// tests/vite-consumer/, bundle it with Vite, serve dist/ from rtlink-server (same origin) and check
// in Chromium that the bundled app connects and receives a message it published.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { JS_DIR, ROOT, assertBuilt, byTest, launchBrowser, startServer, watchConsole } from "./helpers.mjs";

const run = promisify(execFile);
const PKG_DIR = join(ROOT, "pkg");
let tmp;
let server;
let browser;

before(() => {
  assertBuilt();
  if (!existsSync(join(PKG_DIR, "package.json"))) throw new Error("pkg/ is missing: run scripts/package first");
  tmp = mkdtempSync(join(tmpdir(), "rtlink-vite-consumer-"));
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test("rtlink installed from its npm tarball works in a Vite-built app", { timeout: 120_000 }, async () => {
  // 1. npm pack pkg/ into the temp dir.
  const packDir = join(tmp, "pack");
  const appDir = join(tmp, "app");
  cpSync(join(ROOT, "tests/vite-consumer"), appDir, { recursive: true });
  await run("mkdir", ["-p", packDir]);
  const { stdout: packOut } = await run("npm", ["pack", "--silent", "--pack-destination", packDir], { cwd: PKG_DIR, timeout: 60_000 });
  const tarball = join(packDir, packOut.trim().split("\n").pop());
  assert.ok(existsSync(tarball), `npm pack wrote ${tarball}`);

  // 2. Install it like a user would (a local file: no registry involved).
  await run("npm", ["install", "--no-save", "--no-audit", "--no-fund", tarball], { cwd: appDir, timeout: 60_000 });
  const installed = join(appDir, "node_modules/rtlink");
  for (const f of ["package.json", "rtlink.js", "rtlink_bg.wasm", "rtlink.d.ts"]) {
    assert.ok(existsSync(join(installed, f)), `the tarball ships ${f}`);
  }

  // 3. Build with Vite (the copy in tests/js/node_modules), root = the temp app.
  const vitePath = createRequire(join(JS_DIR, "package.json")).resolve("vite");
  const { build } = await import(pathToFileURL(vitePath).href);
  await build({ root: appDir, logLevel: "warn", configFile: false, build: { outDir: join(appDir, "dist"), emptyOutDir: true } });
  const assets = readdirSync(join(appDir, "dist/assets"));
  assert.ok(assets.some((f) => f.endsWith(".wasm")), `Vite emitted the wasm as an asset: ${assets.join(", ")}`);

  // 4. Serve dist/ from rtlink-server (same origin as the API) and load it.
  server = await startServer({ staticDir: join(appDir, "dist") });
  browser = await launchBrowser();
  const page = await browser.newPage();
  const consoleLines = watchConsole(page, "vite-consumer");
  try {
    await page.goto(`${server.url}/`);
    await page.waitForSelector('[data-testid="status"][data-state="received"]', { timeout: 20_000 });
    assert.match(await byTest(page, "received").textContent(), /^hello from a Vite bundle /);
    assert.equal(await byTest(page, "transport").textContent(), "websocket");
  } catch (e) {
    console.log(`# status: ${await byTest(page, "status").textContent().catch(() => "?")}`);
    for (const l of consoleLines) console.log(`# ${l}`);
    throw e;
  }
});
