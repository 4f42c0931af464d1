//! The SSE envelope. (1) The event parser on untrusted bytes never panics and does not depend
//! on how the stream was cut into chunks. (2) Any frame that decodes, rendered as an SSE event
//! by the server's encoder, parses back as exactly one event carrying that frame.
#![no_main]

use faultkit::client::SseParser;
use libfuzzer_sys::fuzz_target;
use rtlink_protocol::codec::{decode_server, encode_server, sse_event};

fuzz_target!(|data: &[u8]| {
    let whole = SseParser::default().feed(data);
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut parser = SseParser::default();
    let mut pieces = parser.feed(&data[..cut]);
    pieces.extend(parser.feed(&data[cut..]));
    assert_eq!(whole, pieces, "events depend on chunking");

    if let Ok(frame) = decode_server(data, usize::MAX) {
        let json = encode_server(&frame);
        let seq = data.len() as u64;
        let events = SseParser::default().feed(&sse_event(seq, &json));
        assert_eq!(events.len(), 1, "one frame, one event");
        assert_eq!(decode_server(events[0].as_bytes(), usize::MAX).as_ref(), Ok(&frame));
    }
});
