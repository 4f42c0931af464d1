//! Upstream batches for SSE and long polling: the frames queued for `POST /v1/send`, cut into
//! bodies the server accepts.
//!
//! A server bounds the body of `POST /v1/send` (`welcome.limits.max_batch_bytes`) and answers a
//! longer one with 413. An offline queue of a few hundred publishes can be far longer than
//! that, and a transport that POSTs it in one body gets the same 413 after every reconnect,
//! forever. So the glue sends the queue as consecutive bodies, each holding as many frames, in
//! order, as fit the limit. Every single frame fits: the core never queues a publish over
//! `max_frame_bytes`, and a body may be larger than a frame by the envelope's allowance.

use alloc::{string::String, vec::Vec};

use super::text::push_json_str;

/// Takes the longest prefix of `queue` (encoded frames, oldest first) whose body
/// `{"session":…,"frames":[…]}` is at most `max_bytes` long, and returns that body. A first
/// frame too large for any body is taken alone (the server refuses it; nothing else waits
/// behind it forever). `None` when the queue is empty.
pub fn take_batch(session: &str, queue: &mut Vec<String>, max_bytes: usize) -> Option<String> {
    if queue.is_empty() {
        return None;
    }
    let mut body = String::from("{\"session\":");
    push_json_str(&mut body, session);
    body.push_str(",\"frames\":[");
    // Bytes the body will have with `n` frames: what is written so far, the frames, their
    // commas and the closing `]}`.
    let mut len = body.len() + 2;
    let mut n = 0;
    for frame in queue.iter() {
        let extra = frame.len() + usize::from(n > 0);
        if n > 0 && len + extra > max_bytes {
            break;
        }
        len += extra;
        n += 1;
    }
    for (i, frame) in queue.drain(..n).enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&frame);
    }
    body.push_str("]}");
    Some(body)
}

// Native only: the checks compare with the JSON codec, a native dev-dependency.
#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rtlink_protocol::codec::decode_upstream;
    use rtlink_protocol::envelope::max_batch_bytes;
    use rtlink_protocol::ClientFrame;

    fn frame(i: usize, size: usize) -> String {
        let f = ClientFrame::Publish {
            room: "r".into(),
            id: i.to_string(),
            payload: "é".repeat(size / 2),
        };
        String::from_utf8(rtlink_protocol::codec::encode_client(&f)).unwrap()
    }

    #[test]
    fn a_long_queue_goes_out_in_bodies_the_server_accepts_in_order() {
        let max_frame = 2_000;
        let limit = max_batch_bytes(max_frame);
        let mut queue: Vec<String> = (0..500).map(|i| frame(i, i % 1_900)).collect();
        let all = queue.clone();
        let mut seen = Vec::new();
        let mut bodies = 0;
        while let Some(body) = take_batch("node.secret", &mut queue, limit) {
            assert!(body.len() <= limit, "body of {} bytes", body.len());
            let batch = decode_upstream(body.as_bytes(), max_frame).unwrap();
            assert_eq!(batch.session, "node.secret");
            seen.extend(batch.frames);
            bodies += 1;
        }
        let want: Vec<ClientFrame> = all
            .iter()
            .map(|f| rtlink_protocol::codec::decode_client(f.as_bytes(), max_frame).unwrap())
            .collect();
        assert_eq!(seen, want, "every frame once, in order");
        assert!(bodies > 10 && bodies < 500, "{bodies} bodies");
    }

    #[test]
    fn the_largest_frame_fits_alone_and_an_oversized_one_does_not_block_the_queue() {
        let max_frame = 1_000;
        let limit = max_batch_bytes(max_frame);
        let mut big = frame(1, 0);
        let pad = max_frame - big.len();
        big = frame(1, pad - pad % 2);
        assert!(big.len() <= max_frame && big.len() > max_frame - 2);
        let mut queue = vec![
            frame(0, 10),
            big.clone(),
            "x".repeat(limit + 10),
            frame(3, 10),
        ];
        let first = take_batch("s", &mut queue, limit).unwrap();
        assert_eq!(
            decode_upstream(first.as_bytes(), max_frame)
                .unwrap()
                .frames
                .len(),
            2
        );
        let second = take_batch("s", &mut queue, limit).unwrap();
        assert!(second.len() > limit, "taken alone");
        assert_eq!(
            take_batch("s", &mut queue, limit).map(|b| b.len() < limit),
            Some(true)
        );
        assert_eq!(take_batch("s", &mut queue, limit), None);
    }
}
