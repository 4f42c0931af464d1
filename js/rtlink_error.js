// Small JS pieces the wasm glue imports. Kept in JS because they hand closures to user code whose
// lifetime only the JS garbage collector knows (an unsubscribe function may be kept forever or
// dropped at once); a Rust closure there would have to leak.

// The one error type rtlink throws or rejects with. `code` is stable and machine-readable.
export class RtlinkError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "RtlinkError";
    this.code = code;
  }
}

// Listener registry behind every `on(event, listener)`.
export class Listeners {
  constructor() {
    this.entries = [];
  }
  // Returns the unsubscribe function; calling it twice is harmless.
  add(scope, event, listener) {
    const entry = { scope, event, listener };
    this.entries.push(entry);
    return () => {
      this.entries = this.entries.filter((e) => e !== entry);
    };
  }
  // A throwing listener is reported and does not stop the others.
  emit(scope, event, value) {
    for (const e of this.entries.slice()) {
      if (e.scope === scope && e.event === event) {
        try {
          e.listener(value);
        } catch (err) {
          console.error("rtlink: listener threw", err);
        }
      }
    }
  }
  clear() {
    this.entries = [];
  }
  get size() {
    return this.entries.length;
  }
}
