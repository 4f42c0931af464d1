//! The transports. Each one admits a client (Origin, limits, then the ticket last:
//! [`crate::http::precheck`]), attaches to a session and moves frames between the client and
//! the session's outbox.

pub mod long_poll;
pub mod send;
pub mod sse;
pub mod websocket;

use std::fmt::Write;

use rtlink_protocol::envelope::PollBatch;

/// Builds a `PollBatch` body from already encoded frames (no re-encoding), in one allocation
/// of its size: growing it frame by frame reallocated and copied it about log₂(size) times
/// (under callgrind, reallocation was about 3.7 % of a long-polled delivery's instructions
/// before, 1.9 % after).
///
/// The frames are copied once into the body. Handing hyper each frame's shared bytes instead
/// (one body chunk per frame and separator) measured worse: the same long-polling fan-out
/// (100 subscribers, 2,000 deliveries/s offered, under callgrind) delivered 603/s against
/// 1,400–1,800/s. A likely reason: hyper queues at most 16 buffers before it writes, so a
/// batch of more than seven frames takes several `writev`s.
pub(crate) fn poll_batch_body<'a>(
    cursor: u64,
    frames: impl Iterator<Item = &'a str> + Clone,
) -> String {
    // The envelope is 23 bytes, a cursor (a u64) at most 20; one comma per frame, less one.
    let len = 43 + frames.clone().map(|f| f.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(len);
    // Writing to a String cannot fail.
    let _ = write!(out, "{{\"cursor\":{cursor},\"frames\":[");
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

#[cfg(test)]
mod tests {
    use rtlink_protocol::codec::decode_poll;

    use super::*;

    /// The body is the envelope around the frames, in one allocation of its size (no slack a
    /// growing string would leave).
    #[test]
    fn a_batch_body_is_one_allocation_of_its_size() {
        let frames: Vec<String> = (0..60)
            .map(|i| {
                format!(
                    r#"{{"t":"typing","room":"r{i}","user":"{}","name":"n","active":true}}"#,
                    "u".repeat(i * 11)
                )
            })
            .collect();
        for (cursor, n) in [(0, 0), (7, 1), (u64::MAX, 60)] {
            let body = poll_batch_body(cursor, frames[..n].iter().map(String::as_str));
            assert!(
                body.capacity() - body.len() <= 20,
                "{} of {}",
                body.len(),
                body.capacity()
            );
            let batch = decode_poll(body.as_bytes(), usize::MAX).expect("a poll batch");
            assert_eq!(batch.cursor, cursor);
            assert_eq!(batch.frames.len(), n);
        }
    }
}
