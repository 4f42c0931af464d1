//! The server's upstream batch parser (`POST /v1/send` bodies, and the same bodies forwarded
//! between nodes): never panics, checks every frame's version, round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtlink_protocol::codec::{decode_upstream, encode_upstream};
use rtlink_protocol::{ClientFrame, PROTOCOL_VERSION};

const MAX: usize = rtlink_protocol::DEFAULT_MAX_FRAME_BYTES;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = decode_upstream(data, MAX) {
        for frame in &batch.frames {
            if let ClientFrame::Hello { v, .. } = frame {
                assert_eq!(*v, PROTOCOL_VERSION, "a hello of another version got through");
            }
        }
        let again = decode_upstream(&encode_upstream(&batch), usize::MAX);
        assert_eq!(again.as_ref(), Ok(&batch), "upstream batch does not round-trip");
    }
});
