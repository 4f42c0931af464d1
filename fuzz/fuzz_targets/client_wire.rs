//! The module's side of the frame boundary (`core::wire`) on any input: the façade (js/wire.js)
//! hands the module a server frame as its kind and its fields, strings separated by 0xFF bytes
//! (tests/core_wire.rs checks that codec against the server's in node). Here the first byte is
//! the kind and the rest the fields, as the module splits them: building a frame never panics
//! and never makes more list items than there are fields; and every client frame the server's
//! codec reads flattens into a record of a known kind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtlink::core::wire::{self, Fields};
use rtlink_protocol::codec::decode_client;
use rtlink_protocol::ServerFrame;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let fields: Vec<&str> = rest
        .split(|b| *b == 0xff)
        .map(|f| std::str::from_utf8(f).unwrap_or(""))
        .collect();
    let frame = wire::server_frame(kind.into(), &mut Fields(fields.iter().copied()));
    let items = match &frame {
        ServerFrame::PresenceSnapshot { conns, .. } => conns.len(),
        ServerFrame::PresenceDiff { joins, leaves, .. } => joins.len() + leaves.len(),
        _ => 0,
    };
    assert!(items <= fields.len(), "more list items than fields");
    if let Ok(frame) = decode_client(data, usize::MAX) {
        let record = wire::client_record(&frame);
        assert!(record.kind & 15 < 10 && record.kind < 32, "unknown client frame kind");
    }
});
