//! faultkit: the parts rtlink's fault scenarios are built from (test support, not published).
//!
//! - [`FaultProxy`]: a proxy on 127.0.0.1 between clients and one or more real `rtlink-server`
//!   processes. It routes every new TCP connection to the next upstream in turn (a load
//!   balancer without stickiness; a connection an upstream refuses, as a dead node does, goes
//!   to the next one) and applies [`Faults`] switched at run time: blackhole,
//!   refused WebSocket upgrades (502), an upgrade killed after `101`, SSE responses held until
//!   they end (a buffering proxy), `429`/`503` with `Retry-After` on opening requests,
//!   latency with jitter, and connections reset at random. In TCP mode (in front of Redis) it
//!   adds latency, blackholes or resets without reading the bytes.
//! - [`Node`] and [`Redis`]: real `rtlink-server` and `redis-server` processes on free loopback
//!   ports, killed on drop (also when a test panics). Redis is a fault too: kill it, restart it
//!   with or without its data, put a TCP proxy in front of it to make it slow.
//! - [`TestClient`]: the real client core (`rtlink::core::Client`, the sans-IO state machine
//!   the browser runs) driven natively with tokio, recording what an app would see.
//! - [`check::tally`]: messages lost, duplicated or reordered against the publisher's acks.
//!
//! # The control API
//!
//! A proxy started with [`ProxyBuilder::control`], or the `faultproxy` binary, serves a small
//! HTTP API for tests that cannot call Rust (browser tests in headless Chromium). CORS allows
//! any origin and method, and bodies are read as JSON whatever their content type (send
//! `text/plain` to skip the preflight).
//!
//! | request | answer |
//! |---|---|
//! | `GET /faults` | `200 {"faults": F, "counters": C, "upstreams": ["127.0.0.1:p", …]}` |
//! | `POST /faults` with body `F` | replaces the faults in force; `200` as `GET`, or `400 {"error","message"}` |
//! | `DELETE /faults` | no fault any more; `200` as `GET` |
//! | `POST /connections/reset` | resets (TCP RST) every open connection; `200 {"reset": n}` |
//! | `GET /healthz` | `200 ok` |
//!
//! `F`, the faults ([`Faults`]); every field is optional and unknown fields are refused:
//!
//! ```json
//! {
//!   "blackhole": false,
//!   "refuse_websocket": false,
//!   "kill_after_upgrade_ms": 0,
//!   "buffer_sse": false,
//!   "reject": {"status": 503, "retry_after_s": 2, "only": ["ticket", "ws", "sse", "poll"], "skip": 0, "limit": 10},
//!   "latency": {"ms": 200, "jitter_ms": 100},
//!   "reset": {"min_ms": 500, "max_ms": 3000}
//! }
//! ```
//!
//! - `blackhole`: stop forwarding both ways, keep sockets open; new connections are accepted
//!   and hang. Held bytes flow again when it is lifted (like a partition TCP survives).
//! - `refuse_websocket`: `502` to every WebSocket upgrade request.
//! - `kill_after_upgrade_ms`: pass the `101`, then reset both sides after this many ms.
//! - `buffer_sse`: hold a `text/event-stream` response, head included, until it ends.
//! - `reject`: answer opening requests (`POST /v1/ticket`, `GET /v1/ws`, `GET /v1/sse`, and
//!   `GET /v1/poll?ticket=…`; `only` narrows the set) with `status`, `Retry-After:
//!   retry_after_s` and the protocol's JSON error body, after forwarding the first `skip` of
//!   them, at most `limit` times if given.
//! - `latency`: delay every chunk by `ms` plus a uniformly random `0..=jitter_ms`, in order.
//! - `reset`: reset each connection at a random time in `min_ms..=max_ms` after it opened (or
//!   after the fault was set).
//!
//! `C`, the counters ([`CounterSnapshot`]): `connections`, `open_connections`, `per_upstream`
//! (new connections routed to each upstream), `requests`, `tickets`, `websocket_upgrades`,
//! `sse_opens`, `poll_opens`, `rejected`, `refused_websocket`, `killed_after_upgrade`,
//! `buffered_sse_responses`, `resets`, `upstream_connect_failures`, `bytes_up`, `bytes_down`.
//!
//! The binary: `faultproxy --listen 127.0.0.1:0 --upstream 127.0.0.1:8081 [--upstream …]
//! --control 127.0.0.1:0 [--tcp]` prints one JSON line `{"proxy": "127.0.0.1:p", "control":
//! "127.0.0.1:q"}` once both listen, then serves until SIGTERM or Ctrl-C.

pub mod check;
pub mod client;
mod control;
pub mod faults;
pub mod http1;
pub mod node;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod scenario;
pub mod token;

pub use check::{tally, Tally};
pub use client::{ClientOptions, Delivered, Observed, TestClient, TokenSpec};
pub use faults::{CounterSnapshot, Faults, Latency, Opening, Reject, Reset};
pub use node::{Node, NodeConfig};
pub use process::{free_port, wait_until};
pub use proxy::{FaultProxy, Mode, ProxyBuilder};
pub use redis::Redis;
pub use scenario::{Figures, Publisher, Stack};

/// The client crate, for its core types (`Config`, `TransportKind`, ...).
pub use rtlink;

/// The `rtlink-server` binary cargo built for the calling integration test of the server crate
/// (a `&'static Path`). A macro: `CARGO_BIN_EXE_*` is set when the *test* is compiled.
#[macro_export]
macro_rules! rtlink_server_bin {
    () => {
        ::std::path::Path::new(env!("CARGO_BIN_EXE_rtlink-server"))
    };
}
