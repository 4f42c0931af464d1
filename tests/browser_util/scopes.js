// Starts tests/browser_util/worker.js (the rtlink client in a worker) as a dedicated Worker or a
// SharedWorker and collects what it reports in `log`, for tests/browser_scopes.rs.
export function startWorker(shared, url, name, room) {
  // Served from the crate root by the test runner (this file itself runs from a copy).
  const script = new URL("/tests/browser_util/worker.js", import.meta.url);
  const log = [];
  const worker = shared ? new SharedWorker(script, { type: "module", name }) : new Worker(script, { type: "module" });
  const port = shared ? worker.port : worker;
  port.onmessage = (m) => log.push(m.data);
  worker.onerror = (e) => log.push({ type: "error", code: "worker_error", message: String(e.message) });
  port.postMessage({ url, name, room });
  return {
    log,
    stop() {
      if (shared) port.close();
      else worker.terminate();
    },
  };
}
