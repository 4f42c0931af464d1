// Shared plumbing for the end-to-end suite: free ports, a redis-server, rtlink-server and a
// headless Chromium, every one of them stopped again (also when a test fails or the process exits).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const JS_DIR = join(ROOT, "tests/js");
export const SERVER_BIN = process.env.RTLINK_SERVER_BIN ?? join(ROOT, "target/debug/rtlink-server");
/** Fixed so tokens stay valid across the server restart test (a real deployment's secret is stable too). */
export const AUTH_SECRET = "rtlink-e2e-test-secret-0123456789abcdef";

const requireFromJs = createRequire(join(JS_DIR, "package.json"));
export const { chromium } = requireFromJs("playwright-core");

export const CHROMIUM_ARGS = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
];

// ---------------------------------------------------------------------------------------------
// Child processes: tracked so that nothing outlives the test process.

const children = new Set();
process.on("exit", () => {
  for (const c of children) {
    try { c.kill("SIGKILL"); } catch { /* already gone */ }
  }
});
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => process.exit(130));
}

function track(proc, label) {
  children.add(proc);
  const out = [];
  const keep = (chunk) => {
    out.push(chunk.toString());
    if (out.length > 400) out.splice(0, out.length - 400);
  };
  proc.stdout?.on("data", keep);
  proc.stderr?.on("data", keep);
  const exited = new Promise((res) => proc.once("exit", (code, signal) => {
    children.delete(proc);
    res({ code, signal });
  }));
  return { proc, label, exited, output: () => out.join("") };
}

/** Kill a tracked process and wait (bounded) for it to exit. */
export async function stopProcess(p, signal = "SIGTERM", timeoutMs = 5000) {
  if (!p || p.proc.exitCode !== null || p.proc.signalCode !== null) return;
  p.proc.kill(signal);
  const done = await Promise.race([p.exited.then(() => true), sleep(timeoutMs).then(() => false)]);
  if (!done) {
    p.proc.kill("SIGKILL");
    await Promise.race([p.exited, sleep(2000)]);
  }
}

export async function freePort() {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

async function canConnect(port) {
  return new Promise((res) => {
    const s = net.connect({ port, host: "127.0.0.1" });
    s.once("connect", () => { s.destroy(); res(true); });
    s.once("error", () => res(false));
  });
}

/** Polls `fn` until it returns truthy or `timeoutMs` passes (then throws with `what`). */
export async function waitUntil(fn, { timeoutMs = 10_000, intervalMs = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(intervalMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
}

// ---------------------------------------------------------------------------------------------
// redis-server

export async function startRedis() {
  const port = await freePort();
  const p = track(spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: ["ignore", "pipe", "pipe"],
  }), "redis-server");
  p.proc.on("error", () => {});
  try {
    await waitUntil(() => canConnect(port), { timeoutMs: 10_000, what: `redis-server on port ${port}` });
  } catch (e) {
    await stopProcess(p, "SIGKILL");
    throw new Error(`${e.message}\n${p.output()}`);
  }
  return { ...p, port, url: `redis://127.0.0.1:${port}`, stop: () => stopProcess(p) };
}

// ---------------------------------------------------------------------------------------------
// rtlink-server

export function assertBuilt() {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(`${SERVER_BIN} is missing: run \`cargo build -p rtlink-server\` first`);
  }
}

/**
 * Starts rtlink-server on `port` (a free one if not given) and waits for /healthz. Retries the
 * bind for a few seconds (the restart test reuses the port a killed server just held).
 */
export async function startServer({ port, staticDir = join(ROOT, "www"), redis, args = [], secret = AUTH_SECRET } = {}) {
  assertBuilt();
  port ??= await freePort();
  const argv = [
    "--listen", `127.0.0.1:${port}`, "--static-dir", staticDir, "--demo-auth",
    // `secret: null` runs like `make demo`: a new random secret on every start.
    ...(secret ? ["--auth-secret", secret] : []), "--allow-localhost-origins",
    "--ping-interval", "2s", "--heartbeat-grace", "3s", "--presence-grace", "2s", "--typing-ttl", "4s",
    "--drain-window", "3s",
    ...(redis ? ["--redis", redis] : []),
    ...args,
  ];
  const deadline = Date.now() + 15_000;
  for (;;) {
    const p = track(spawn(SERVER_BIN, argv, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", NO_COLOR: "1", RUST_BACKTRACE: "0", RUST_LIB_BACKTRACE: "0" },
    }), "rtlink-server");
    p.proc.on("error", () => {});
    const url = `http://127.0.0.1:${port}`;
    const healthy = waitUntil(async () => (await fetch(`${url}/healthz`)).ok, {
      timeoutMs: 10_000, intervalMs: 100, what: `rtlink-server /healthz on ${port}`,
    }).then(() => "up", (e) => e);
    const result = await Promise.race([healthy, p.exited.then(() => "exited")]);
    if (result === "up") {
      return { ...p, port, url, argv, stop: (signal) => stopProcess(p, signal) };
    }
    await stopProcess(p, "SIGKILL");
    const out = p.output();
    if (result === "exited" && /address already in use/i.test(out) && Date.now() < deadline) {
      await sleep(250);
      continue;
    }
    throw new Error(`rtlink-server did not come up (${result instanceof Error ? result.message : result}):\n${out.slice(-4000)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Browser

export async function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium", args: CHROMIUM_ARGS, timeout: 30_000 });
}

/** Collects console errors and page errors of a page (printed when a test fails). */
export function watchConsole(page, label) {
  const lines = [];
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") lines.push(`[${label} console.${m.type()}] ${m.text()}`);
  });
  page.on("pageerror", (e) => lines.push(`[${label} pageerror] ${e.message}`));
  return lines;
}

export const byTest = (page, id) => page.locator(`[data-testid="${id}"]`);
