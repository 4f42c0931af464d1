//! The client's own decoder (`core::json` + `core::wire`, what the browser module reads every
//! frame with instead of serde) on any text a server or a proxy could send, checked against the
//! server's serde codec: never a panic, never more lenient than JSON, a frame it reads is the
//! frame the server would write for it, and the client frames it writes are the bytes the
//! server's codec writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtlink::core::{json, wire};
use rtlink_protocol::codec::{decode_client, decode_server, encode_client, encode_server};
use rtlink_protocol::ServerFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if json::parse(text).is_some() {
        // Where serde_json is stricter than the JSON grammar: a number beyond f64 (`1e999`),
        // which the reader reads as "not a whole number" (a frame field refuses it), and a
        // lone surrogate escape (`"\udc00"`), which the reader reads as U+FFFD like
        // `JSON.parse` keeps it.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            let e = e.to_string();
            assert!(
                e.starts_with("number out of range") || has_surrogate_escape(text),
                "the reader accepted invalid JSON: {e}"
            );
        }
    }
    if let Ok(frame) = wire::decode(text) {
        if frame != ServerFrame::Unknown {
            // What the client read, the server writes as text the client reads the same way.
            let written = encode_server(&frame);
            let written = std::str::from_utf8(&written).expect("the server writes UTF-8");
            assert_eq!(
                wire::decode(written).as_ref(),
                Ok(&frame),
                "a decoded frame does not round-trip through the server's encoder"
            );
            assert_eq!(
                decode_server(written.as_bytes(), usize::MAX).as_ref(),
                Ok(&frame),
                "the server's codec reads it differently"
            );
        }
    }
    if let Ok(frame) = decode_client(data, usize::MAX) {
        assert_eq!(
            wire::encode(&frame).as_bytes(),
            encode_client(&frame).as_slice(),
            "the client writes other bytes than the server's codec"
        );
    }
});

/// A `\uD800`-`\uDFFF` escape anywhere (serde_json refuses a lone one in several ways).
fn has_surrogate_escape(text: &str) -> bool {
    text.as_bytes().windows(4).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && w[2] | 0x20 == b'd'
            && matches!(w[3] | 0x20, b'8'..=b'9' | b'a'..=b'f')
    })
}
