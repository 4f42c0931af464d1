//! The transports. Each one admits a client (Origin, limits, then the ticket last:
//! [`crate::http::precheck`]), attaches to a session and moves frames between the client and
//! the session's outbox.

pub mod long_poll;
pub mod send;
pub mod sse;
pub mod websocket;

use rtlink_protocol::envelope::PollBatch;

/// Builds a `PollBatch` body from already encoded frames (no re-encoding).
pub(crate) fn poll_batch_body<'a>(cursor: u64, frames: impl Iterator<Item = &'a str>) -> String {
    let mut out = format!("{{\"cursor\":{cursor},\"frames\":[");
    for (i, f) in frames.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
    }
    out.push_str("]}");
    // Keep the shape in one place with the protocol's type.
    debug_assert!(serde_json::from_str::<PollBatch>(&out).is_ok());
    out
}
