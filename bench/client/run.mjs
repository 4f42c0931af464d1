// `make bench-client`: messages per second delivered to a JS listener in headless Chromium, the
// rtlink client (pkg/) against socket.io-client 4.8, in the same page, alternating rounds.
// A native publisher (`rtlink-bench publish`) sends the same 100-byte JSON-string payloads to
// rtlink-server and to the Socket.IO peer, both on 127.0.0.1; everything is stopped at the end.
// Prints a Markdown table and writes it to target/bench/client.md for docs/BENCHMARKS.md.
import { spawn, execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const require = createRequire(join(ROOT, "bench/peers/package.json"));
const { chromium } = require("playwright-core");
const COUNT = Number(process.env.BENCH_CLIENT_MESSAGES ?? 20000);
const RATE = Number(process.env.BENCH_CLIENT_RATE ?? 50000);
const ROUNDS = 3;

const children = [];
process.on("exit", () => children.forEach((c) => { try { c.kill("SIGKILL"); } catch {} }));

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => res(port)); });
  });
}

async function listening(port) {
  for (let i = 0; i < 300; i++) {
    const ok = await new Promise((r) => { const s = net.connect(port, "127.0.0.1"); s.once("connect", () => { s.destroy(); r(true); }); s.once("error", () => r(false)); });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${port}`);
}

function start(cmd, args) {
  const c = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RTLINK_LOG: "warn" } });
  children.push(c);
  return c;
}

function publish(peer, port) {
  return new Promise((res, rej) => {
    const p = start(join(ROOT, "target/server/rtlink-bench"), ["publish", "--peer", peer, "--port", String(port), "--count", String(COUNT), "--rate", String(RATE)]);
    p.on("exit", (code) => (code === 0 ? res() : rej(new Error(`publisher exited ${code}`))));
  });
}

if (!existsSync(join(ROOT, "pkg/rtlink.js"))) throw new Error("pkg/ is missing: run `make package`");
const site = mkdtempSync(join(tmpdir(), "rtlink-bench-client-"));
cpSync(join(ROOT, "pkg"), join(site, "pkg"), { recursive: true });
cpSync(join(ROOT, "bench/peers/node_modules/socket.io-client/dist/socket.io.min.js"), join(site, "socket.io.min.js"));
cpSync(join(HERE, "page.html"), join(site, "index.html"));

const [rtPort, sioPort] = [await freePort(), await freePort()];
// The flags every benchmark starts rtlink-server with (bench/src/procs.rs), then this page's own.
const RTLINK_FLAGS = execFileSync(join(ROOT, "target/server/rtlink-bench"), ["rtlink-flags"]).toString().trim().split("\n");
start(join(ROOT, "target/server/rtlink-server"), [
  "--listen", `127.0.0.1:${rtPort}`, ...RTLINK_FLAGS, "--static-dir", site,
  "--outbox-max-frames", "1000000", "--outbox-max-bytes", "1000000000",
]);
start("node", [join(ROOT, "bench/peers/socketio-server.mjs"), String(sioPort)]);
await listening(rtPort);
await listening(sioPort);

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const results = { rtlink: [], "socket.io-client": [] };
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${rtPort}/index.html`);
  await page.waitForFunction(() => window.benchReady === true);
  for (let round = 0; round < ROUNDS; round++) {
    for (const kind of ["rtlink", "socket.io-client"]) {
      if (kind === "rtlink") await page.evaluate((n) => window.bench.rtlink(n), COUNT);
      else await page.evaluate(([n, url]) => window.bench.socketio(n, url), [COUNT, `http://127.0.0.1:${sioPort}`]);
      await publish(kind === "rtlink" ? "rtlink" : "socketio", kind === "rtlink" ? rtPort : sioPort);
      const r = await page.evaluate((t) => window.bench.wait(t), 60_000);
      r.perSec = r.received > 1 ? ((r.received - 1) * 1000) / r.ms : 0;
      results[kind].push(r);
      console.error(`  ${kind} round ${round + 1}: ${r.received}/${COUNT} in ${r.ms.toFixed(0)} ms = ${r.perSec.toFixed(0)} msg/s, ${r.disorder} out of order`);
    }
  }
} finally {
  await browser.close();
  children.forEach((c) => c.kill("SIGKILL"));
  rmSync(site, { recursive: true, force: true });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const version = execFileSync("/usr/bin/chromium", ["--version"]).toString().trim();
let md = `### Client: messages/s to a JS listener in headless Chromium\n\n`;
md += `${version}; ${COUNT} messages of 100 bytes per round, published at up to ${RATE}/s by \`rtlink-bench publish\`; `;
md += `both clients in one page, ${ROUNDS} alternating rounds, the median shown. Time is first to last delivery to the listener.\n\n`;
md += `| client | messages/s (median) | rounds | all delivered in order |\n|---|---:|---|---|\n`;
for (const [kind, rs] of Object.entries(results)) {
  const ok = rs.every((r) => r.received === COUNT && r.disorder === 0);
  md += `| ${kind} | **${median(rs.map((r) => r.perSec)).toFixed(0)}** | ${rs.map((r) => r.perSec.toFixed(0)).join(", ")} | ${ok ? "yes" : "NO"} |\n`;
}
const ratio = median(results.rtlink.map((r) => r.perSec)) / median(results["socket.io-client"].map((r) => r.perSec));
md += `\nrtlink ÷ socket.io-client: **${ratio.toFixed(2)}**\n`;
mkdirSync(join(ROOT, "target/bench"), { recursive: true });
writeFileSync(join(ROOT, "target/bench/client.md"), md);
console.log(md);
console.log(`client_vs_socketio=${ratio.toFixed(2)}`);
