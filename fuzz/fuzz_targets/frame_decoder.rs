//! The frame decoders on untrusted bytes (a WebSocket text message, one frame of an upstream
//! batch, a `POST /v1/ticket` body): never panic, refuse oversized input before parsing, and
//! whatever decodes re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtlink_protocol::codec::{decode_client, decode_server, decode_ticket_request, encode_client, encode_server, DecodeError};
use rtlink_protocol::envelope::TicketRequest;

const MAX: usize = rtlink_protocol::DEFAULT_MAX_FRAME_BYTES;
/// The server's limit on a `POST /v1/ticket` body.
const MAX_TICKET_BODY: usize = 4096;

fuzz_target!(|data: &[u8]| {
    match decode_client(data, MAX) {
        Ok(frame) => {
            let again = decode_client(&encode_client(&frame), usize::MAX);
            assert_eq!(again.as_ref(), Ok(&frame), "client frame does not round-trip");
        }
        Err(DecodeError::TooLarge { len, max }) => assert!(len > max && data.len() > MAX),
        Err(_) => {}
    }
    if let Ok(frame) = decode_server(data, MAX) {
        let again = decode_server(&encode_server(&frame), usize::MAX);
        assert_eq!(again.as_ref(), Ok(&frame), "server frame does not round-trip");
    }
    if let Ok(request) = decode_ticket_request(data, MAX_TICKET_BODY) {
        let json = serde_json::to_vec(&request).expect("a ticket request serializes");
        let again: TicketRequest = serde_json::from_slice(&json).expect("and parses back");
        assert_eq!(again, request, "ticket request does not round-trip");
    }
});
