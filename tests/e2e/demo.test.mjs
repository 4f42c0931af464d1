// End-to-end: the demo chat and dashboard (www/) in headless Chromium against a real
// rtlink-server backed by a real redis-server, both started here on free loopback ports.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  ROOT, assertBuilt, byTest, freePort, launchBrowser, startRedis, startServer, watchConsole,
} from "./helpers.mjs";

// No test run writes into tracked files: the screenshot goes to a temporary directory, unless
// `make demo-screenshot` asks for docs/demo.png (RTLINK_SCREENSHOT).
const SCRATCH = mkdtempSync(join(tmpdir(), "rtlink-e2e-"));
const SCREENSHOT = process.env.RTLINK_SCREENSHOT ?? join(SCRATCH, "demo.png");
let redis;
let server;
let browser;
/** Set when this build's server has no Redis broker (then the restart test cannot pass). */
let redisMissing = null;

before(async () => {
  assertBuilt();
  if (!existsSync(join(ROOT, "www/pkg/rtlink.js"))) {
    throw new Error("www/pkg is missing: run `scripts/package && rm -rf www/pkg && cp -r pkg www/pkg`");
  }
  redis = await startRedis();
  try {
    server = await startServer({ redis: redis.url });
  } catch (e) {
    if (!/redis broker not available/i.test(e.message)) throw e;
    redisMissing = "rtlink-server was built without the Redis broker (`--redis` refused)";
    console.log(`# WARNING: ${redisMissing}; running on the in-memory broker, the restart test is skipped`);
    server = await startServer({});
  }
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  await redis?.stop();
  rmSync(SCRATCH, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Page helpers

/**
 * Runs `fn(open)` where `open(name, opts)` opens the demo as `name` in a fresh browser context.
 * Closes every context afterwards; prints the pages' console errors when `fn` throws.
 */
async function withUsers(fn) {
  const contexts = [];
  const consoles = [];
  const open = async (name, { room = "general", viewport = { width: 1280, height: 800 }, setup, context } = {}) => {
    const ctx = context ?? await browser.newContext({ viewport });
    if (!context) contexts.push(ctx);
    const page = await ctx.newPage();
    consoles.push(watchConsole(page, name));
    if (setup) await setup(page);
    await page.goto(`${server.url}/`);
    await byTest(page, "name-input").fill(name);
    await byTest(page, "join-button").click();
    await waitBadge(page, ["open"], { timeoutMs: 15_000 });
    if (room !== "general") await byTest(page, `room-${room}`).click();
    await waitPresence(page, name);
    return page;
  };
  try {
    await fn(open);
  } catch (e) {
    for (const lines of consoles) for (const l of lines) console.log(`# ${l}`);
    throw e;
  } finally {
    for (const ctx of contexts) await ctx.close().catch(() => {});
  }
}

const badge = (page) => byTest(page, "badge");

async function waitBadge(page, states, { transport, timeoutMs = 10_000 } = {}) {
  await page.waitForFunction(
    ([states, transport]) => {
      const b = document.querySelector('[data-testid="badge"]');
      return b && states.includes(b.dataset.state) && (!transport || b.dataset.transport === transport);
    },
    [states, transport ?? null],
    { timeout: timeoutMs, polling: 50 },
  );
}

async function waitPresence(page, name, { connections, timeoutMs = 10_000 } = {}) {
  await page.waitForFunction(
    ([name, connections]) => [...document.querySelectorAll('[data-testid="presence-item"]')]
      .some((n) => n.dataset.name === name && (connections == null || n.dataset.connections === String(connections))),
    [name, connections ?? null],
    { timeout: timeoutMs },
  );
}

async function send(page, text) {
  await byTest(page, "send-input").fill(text);
  await byTest(page, "send-button").click();
}

const messageTexts = (page) => page.$$eval('[data-testid="message-text"]', (ns) => ns.map((n) => n.textContent));

async function waitMessage(page, text, { timeoutMs = 10_000 } = {}) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('[data-testid="message-text"]')].some((n) => n.textContent === t),
    text,
    { timeout: timeoutMs },
  );
}

/** The status ("pending" / "sent" / "failed" / "received") of the message with this text. */
const messageStatus = (page, text) => page.$$eval('[data-testid="message"]', (ns, t) =>
  ns.filter((n) => n.querySelector('[data-testid="message-text"]')?.textContent === t).map((n) => n.dataset.status), text);

async function waitStatus(page, text, status, { timeoutMs = 10_000 } = {}) {
  await page.waitForFunction(
    ([t, s]) => [...document.querySelectorAll('[data-testid="message"]')]
      .some((n) => n.dataset.status === s && n.querySelector('[data-testid="message-text"]')?.textContent === t),
    [text, status],
    { timeout: timeoutMs },
  );
}

const typingText = (page) => byTest(page, "typing-indicator").textContent();

async function waitTyping(page, expected, { timeoutMs = 10_000 } = {}) {
  await page.waitForFunction(
    (e) => document.querySelector('[data-testid="typing-indicator"]').textContent.trim() === e,
    expected,
    { timeout: timeoutMs },
  );
}

// ---------------------------------------------------------------------------------------------
// Tests

test("two users see each other, typing and messages both ways", { timeout: 60_000 }, async () => {
  await withUsers(async (open) => {
    const ana = await open("Ana");
    const bo = await open("Bo");

    // Presence: each sees the other, with one connection.
    await waitPresence(ana, "Bo", { connections: 1 });
    await waitPresence(bo, "Ana", { connections: 1 });
    assert.equal(await byTest(ana, "presence-count").textContent(), "2");

    // Typing: Ana types, Bo sees it; it disappears once Ana sends.
    await byTest(ana, "send-input").pressSequentially("Hi Bo, ", { delay: 20 });
    await waitTyping(bo, "Ana is typing…");
    assert.equal((await typingText(ana)).trim(), "", "Ana does not see herself typing");
    await byTest(ana, "send-input").pressSequentially("how are you?", { delay: 10 });
    await byTest(ana, "send-button").click();
    await waitTyping(bo, "");
    await waitMessage(bo, "Hi Bo, how are you?");
    await waitStatus(ana, "Hi Bo, how are you?", "sent");

    // And back.
    await send(bo, "Great, thanks Ana!");
    await waitMessage(ana, "Great, thanks Ana!");
    const fromBo = ana.locator('[data-testid="message"]', { hasText: "Great, thanks Ana!" });
    assert.equal(await fromBo.getAttribute("data-sender"), "Bo");
    assert.deepEqual(await messageTexts(ana), ["Hi Bo, how are you?", "Great, thanks Ana!"]);
    assert.deepEqual(await messageTexts(bo), ["Hi Bo, how are you?", "Great, thanks Ana!"]);

    // Typing that stops without sending also disappears (the SDK's idle stop or the blur).
    await byTest(bo, "send-input").pressSequentially("hm", { delay: 20 });
    await waitTyping(ana, "Bo is typing…");
    await byTest(bo, "send-input").blur();
    await waitTyping(ana, "");
  });
});

test("server killed and restarted: clients reconnect, queued messages arrive exactly once", { timeout: 90_000 }, async (t) => {
  if (redisMissing) {
    t.skip(`${redisMissing}: history cannot survive a restart`);
    return;
  }
  await withUsers(async (open) => {
    const ana = await open("Ana", { room: "random" });
    const bo = await open("Bo", { room: "random" });
    await waitPresence(ana, "Bo");
    await send(bo, "before the outage");
    await waitMessage(ana, "before the outage");

    const port = server.port;
    await server.stop("SIGKILL");
    for (const p of [ana, bo]) {
      await waitBadge(p, ["backing-off", "connecting"], { timeoutMs: 15_000 });
      await p.waitForSelector('[data-testid="log-item"][data-kind="backing-off"]', { state: "attached", timeout: 15_000 });
    }
    // While the server is down the countdown is visible at some point.
    await ana.waitForFunction(() => {
      const c = document.querySelector('[data-testid="badge-countdown"]');
      return !c.hidden && /retry in \d+\.\d s/.test(c.textContent);
    }, null, { timeout: 15_000, polling: 20 });

    const outage = ["sent during the outage 1", "sent during the outage 2", "sent during the outage 3"];
    for (const text of outage) await send(ana, text);
    for (const text of outage) assert.deepEqual(await messageStatus(ana, text), ["pending"]);

    await sleep(1000);
    server = await startServer({ port, redis: redis.url });

    for (const p of [ana, bo]) await waitBadge(p, ["open"], { timeoutMs: 30_000 });
    for (const text of outage) {
      await waitMessage(bo, text, { timeoutMs: 15_000 });
      await waitStatus(ana, text, "sent", { timeoutMs: 15_000 });
    }
    await send(bo, "after the restart");
    await waitMessage(ana, "after the restart");
    await sleep(1500); // give any duplicate the time to show up

    const count = (texts, t) => texts.filter((x) => x === t).length;
    const boTexts = await messageTexts(bo);
    const anaTexts = await messageTexts(ana);
    for (const text of outage) {
      assert.equal(count(boTexts, text), 1, `Bo sees "${text}" exactly once: ${JSON.stringify(boTexts)}`);
      assert.equal(count(anaTexts, text), 1, `Ana sees "${text}" exactly once: ${JSON.stringify(anaTexts)}`);
    }
    assert.deepEqual(boTexts, ["before the outage", ...outage, "after the restart"], "in order");
  });
});

test("WebSocket blocked → SSE, SSE blocked too → long polling, chatting all along", { timeout: 90_000 }, async () => {
  await withUsers(async (open) => {
    // Cy's browser cannot open WebSockets: every one is closed before a frame gets through.
    const cy = await open("Cy", {
      room: "help",
      setup: (page) => page.routeWebSocket(/.*/, (ws) => ws.close({ code: 1011, reason: "blocked by test" })),
    });
    const dee = await open("Dee", { room: "help" });
    await waitBadge(cy, ["open"], { transport: "sse" });
    assert.equal(await byTest(cy, "badge-transport").textContent(), "SSE");
    assert.equal(await badge(dee).getAttribute("data-transport"), "websocket");
    await waitPresence(cy, "Dee");
    await waitPresence(dee, "Cy");

    await send(cy, "hello over SSE");
    await waitMessage(dee, "hello over SSE");
    await send(dee, "hello back over WebSocket");
    await waitMessage(cy, "hello back over WebSocket");

    // Now SSE is blocked as well; go offline and back online to make the client reconnect.
    await cy.route("**/v1/sse**", (route) => route.abort());
    await byTest(cy, "offline-toggle").click();
    await waitBadge(cy, ["offline"]);
    await byTest(cy, "offline-toggle").click();
    await waitBadge(cy, ["open"], { transport: "long-polling", timeoutMs: 30_000 });
    assert.equal(await byTest(cy, "badge-transport").textContent(), "Long polling");

    await send(cy, "hello over long polling");
    await waitMessage(dee, "hello over long polling");
    await send(dee, "still here");
    await waitMessage(cy, "still here");

    const expected = ["hello over SSE", "hello back over WebSocket", "hello over long polling", "still here"];
    assert.deepEqual(await messageTexts(cy), expected);
    assert.deepEqual(await messageTexts(dee), expected);
  });
});

test("screenshot of a conversation, a second tab counts as a second connection", { timeout: 60_000 }, async () => {
  await withUsers(async (open) => {
    const ana = await open("Ana");
    const bo = await open("Bo");
    // Bo opens a second tab: same user (the demo token is cached per name), two connections.
    const boTab2 = await open("Bo", { context: bo.context() });
    await waitPresence(ana, "Bo", { connections: 2 });
    await waitPresence(boTab2, "Ana");

    const script = [
      [ana, "Hey Bo! Did the new build go out?"],
      [bo, "Yes, rolled out at 14:02. The server drained and everyone reconnected on their own"],
      [ana, "Nice. I blocked WebSockets on purpose: it fell back to SSE and nothing got lost."],
      [bo, "Try long polling too, it's in the controls on the right →"],
      [ana, "Sent three messages while offline, each arrived exactly once"],
    ];
    for (const [page, text] of script) {
      await send(page, text);
      await waitMessage(page === ana ? bo : ana, text);
    }
    await byTest(bo, "send-input").pressSequentially("Shipping it", { delay: 20 });
    await waitTyping(ana, "Bo is typing…");
    await ana.locator('[data-testid="message"][data-status="pending"]').waitFor({ state: "detached", timeout: 10_000 });
    await byTest(ana, "send-input").focus();
    await ana.evaluate(() => document.activeElement?.blur());

    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await ana.screenshot({ path: SCREENSHOT });
    assert.ok(existsSync(SCREENSHOT));
  });
});

test("dashboard receives live activity over SSE", { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const lines = [];
  try {
    const dash = await ctx.newPage();
    lines.push(watchConsole(dash, "dashboard"));
    await dash.goto(`${server.url}/dashboard.html`);
    await waitBadge(dash, ["open"], { transport: "sse", timeoutMs: 15_000 });
    assert.equal(await byTest(dash, "badge-transport").textContent(), "SSE");

    await withUsers(async (open) => {
      const eve = await open("Eve");
      await dash.waitForSelector('[data-testid="room-people-general"] [data-name="Eve"]', { timeout: 10_000 });
      await send(eve, "hello dashboard");
      await dash.waitForSelector('[data-testid="feed-item"][data-room="general"] >> text=hello dashboard', { timeout: 10_000 });
      await dash.waitForSelector('[data-testid="toast"] >> text=hello dashboard', { timeout: 5_000 });
      assert.equal(await byTest(dash, "room-count-general").textContent(), "1");
      assert.equal(await byTest(dash, "room-count-random").textContent(), "0");
      assert.match(await byTest(dash, "room-last-general").textContent(), /Eve: hello dashboard/);
      // The dashboard is an observer: the chat does not list it as a person.
      await sleep(500);
      assert.equal(await eve.locator('[data-testid="presence-item"][data-name="Dashboard"]').count(), 0);
    });
  } catch (e) {
    for (const l of lines.flat()) console.log(`# ${l}`);
    throw e;
  } finally {
    await ctx.close().catch(() => {});
  }
});

// The leaver unsubscribes and closes at once: its presence leave is still awaiting the broker when
// the close arrives. This once failed intermittently (the server aborted the WebSocket reader
// mid-frame and the leave was lost, visible with Redis); it guards that fix.
test("dashboard drops a user who leaves", { timeout: 40_000 }, async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  try {
    const dash = await ctx.newPage();
    await dash.goto(`${server.url}/dashboard.html`);
    await waitBadge(dash, ["open"], { transport: "sse", timeoutMs: 15_000 });
    await withUsers(async (open) => {
      const gus = await open("Gus");
      await dash.waitForSelector('[data-testid="room-people-general"] [data-name="Gus"]', { timeout: 10_000 });
      await byTest(gus, "leave-button").click(); // leaves the room and closes the client
      await dash.waitForSelector('[data-testid="room-people-general"] [data-name="Gus"]', { state: "detached", timeout: 10_000 });
    });
  } finally {
    await ctx.close().catch(() => {});
  }
});

test("drain: both clients get a reconnect window, spread their reconnects and come back", { timeout: 60_000 }, async () => {
  await withUsers(async (open) => {
    const ana = await open("Ana", { room: "help" });
    const bo = await open("Bo", { room: "help" });
    await byTest(ana, "drain-button").click();
    for (const p of [ana, bo]) {
      await p.waitForSelector('[data-testid="log-item"] >> text=/reconnecting in \\d+ ms/', { state: "attached", timeout: 10_000 });
      await waitBadge(p, ["open"], { timeoutMs: 20_000 });
    }
    await send(bo, "after the drain");
    await waitMessage(ana, "after the drain");
  });
});

test("works at phone width (375 px)", { timeout: 30_000 }, async () => {
  await withUsers(async (open) => {
    const page = await open("Fay", { viewport: { width: 375, height: 740 } });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(overflow <= 375, `no horizontal scrolling (scrollWidth ${overflow})`);
    for (const id of ["send-input", "send-button", "badge", "room-random", "presence-list"]) {
      assert.ok(await byTest(page, id).isVisible(), `${id} is visible`);
    }
    await send(page, "hello from a phone");
    await waitStatus(page, "hello from a phone", "sent");
  });
});

// `make demo` runs without --auth-secret, so every restart signs with a new secret and the token a
// page cached is refused. The page must notice by the error's code (never its message text) and
// come back by itself, as a fresh identity.
test("demo server restarted with a new secret: the page gets a fresh identity by itself", { timeout: 90_000 }, async () => {
  const port = await freePort();
  let demo = await startServer({ port, secret: null });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const consoleLines = [];
  try {
    const page = await ctx.newPage();
    consoleLines.push(watchConsole(page, "Hal"));
    await page.goto(`${demo.url}/`);
    await byTest(page, "name-input").fill("Hal");
    await byTest(page, "join-button").click();
    await waitBadge(page, ["open"], { timeoutMs: 15_000 });
    await waitPresence(page, "Hal");
    const before = await page.locator('[data-testid="presence-item"][data-name="Hal"]').getAttribute("data-user");
    assert.ok(before, "joined with an identity");

    await demo.stop("SIGKILL");
    demo = await startServer({ port, secret: null });

    await page.waitForSelector('[data-testid="log-item"] >> text=token refused', { state: "attached", timeout: 30_000 });
    await waitBadge(page, ["open"], { timeoutMs: 30_000 });
    await page.waitForFunction((old) => [...document.querySelectorAll('[data-testid="presence-item"]')]
      .some((n) => n.dataset.name === "Hal" && n.dataset.user !== old), before, { timeout: 10_000 });
    await send(page, "back after the restart");
    await waitStatus(page, "back after the restart", "sent");
  } catch (e) {
    for (const l of consoleLines.flat()) console.log(`# ${l}`);
    throw e;
  } finally {
    await ctx.close().catch(() => {});
    await demo.stop();
  }
});
