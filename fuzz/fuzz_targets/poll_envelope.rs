//! The long-poll envelopes on untrusted bytes: the response batch (`PollBatch`, read by
//! clients) and the continuation body (`POST /v1/poll`, read by the server). Never panic,
//! round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtlink_protocol::codec::{decode_poll, decode_poll_request, encode_poll};
use rtlink_protocol::envelope::PollRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = decode_poll(data, 1 << 20) {
        let again = decode_poll(&encode_poll(&batch), usize::MAX);
        assert_eq!(again.as_ref(), Ok(&batch), "poll batch does not round-trip");
    }
    if let Ok(request) = decode_poll_request(data, 4096) {
        let json = serde_json::to_vec(&request).expect("a poll request serializes");
        let again: PollRequest = serde_json::from_slice(&json).expect("and parses back");
        assert_eq!(again, request, "poll request does not round-trip");
    }
});
