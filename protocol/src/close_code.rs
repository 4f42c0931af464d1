//! Close codes: why a connection ended, and what the client must do next.
//!
//! Codes live in the WebSocket application range (4000–4999) so the same number travels as a
//! WebSocket close code, inside a `close` frame on SSE and long polling, and in docs/PROTOCOL.md.

use serde::{Deserialize, Serialize};

/// A close code. Unknown codes are kept (not rejected) and treated as "retry with backoff", so an
/// older client survives a newer server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CloseCode(pub u16);

/// What a client does after a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// Stop: reconnecting would fail the same way.
    Terminal,
    /// Reconnect after a jittered exponential backoff delay.
    RetryWithBackoff,
    /// Reconnect at a random point inside the window the server sent in `reconnect_after`
    /// (backoff if none was sent).
    RetryAfterServerDelay,
    /// Fetch a fresh token, then reconnect at once (once; a second failure is terminal).
    Reauthenticate,
    /// Reconnect at once without resuming: the session is gone, rooms are re-subscribed.
    RetryNewSession,
    /// The client itself moved the session to another transport: nothing to do.
    Superseded,
}

impl CloseCode {
    /// The client or server closed on purpose; the client does not reconnect.
    pub const NORMAL: Self = Self(1000);
    /// The server is going away (WebSocket's own code); retry with backoff.
    pub const GOING_AWAY: Self = Self(1001);
    /// A frame could not be parsed.
    pub const MALFORMED_FRAME: Self = Self(4000);
    /// A frame was larger than the server's `max_frame_bytes`.
    pub const FRAME_TOO_LARGE: Self = Self(4001);
    /// The client speaks a protocol version the server does not.
    pub const UNSUPPORTED_VERSION: Self = Self(4002);
    /// The client kept sending after its rate-limit nacks.
    pub const RATE_LIMITED: Self = Self(4003);
    /// The client read too slowly; its outbound queue overflowed.
    pub const SLOW_CONSUMER: Self = Self(4004);
    /// No frame from the peer within the heartbeat deadline.
    pub const HEARTBEAT_TIMEOUT: Self = Self(4005);
    /// The session was attached to a newer transport of the same client.
    pub const SUPERSEDED: Self = Self(4006);
    /// The session to resume is unknown or expired.
    pub const SESSION_EXPIRED: Self = Self(4007);
    /// The server is draining; a `reconnect_after` frame came first.
    pub const SERVER_DRAINING: Self = Self(4008);
    /// The token expired while connected.
    pub const TOKEN_EXPIRED: Self = Self(4009);
    /// The token is not valid for this server, or the user is not allowed at all.
    pub const FORBIDDEN: Self = Self(4010);
    /// The server failed internally.
    pub const INTERNAL_ERROR: Self = Self(4011);
    /// A frame arrived that is valid JSON but breaks the protocol (e.g. a second hello).
    pub const PROTOCOL_VIOLATION: Self = Self(4012);
    /// The application's backend ended this user's sessions (`DELETE /v1/users/{user}/sessions`:
    /// logout, ban). Reconnecting with the same token would undo it, so the client stops.
    pub const DISCONNECTED: Self = Self(4013);

    /// What a client must do after a close with this code. docs/PROTOCOL.md's close-code table
    /// and js/rtlink.js `TERMINAL` say the same (tests/core_close_codes.rs checks both).
    pub fn action(self) -> CloseAction {
        match self.0 {
            1000 => CloseAction::Terminal,
            4002 | 4010 | 4013 => CloseAction::Terminal,
            4006 => CloseAction::Superseded,
            4007 => CloseAction::RetryNewSession,
            4008 => CloseAction::RetryAfterServerDelay,
            4009 => CloseAction::Reauthenticate,
            _ => CloseAction::RetryWithBackoff,
        }
    }

    /// A short stable name for logs and UIs.
    pub fn name(self) -> &'static str {
        match self.0 {
            1000 => "normal",
            1001 => "going_away",
            4000 => "malformed_frame",
            4001 => "frame_too_large",
            4002 => "unsupported_version",
            4003 => "rate_limited",
            4004 => "slow_consumer",
            4005 => "heartbeat_timeout",
            4006 => "superseded",
            4007 => "session_expired",
            4008 => "server_draining",
            4009 => "token_expired",
            4010 => "forbidden",
            4011 => "internal_error",
            4012 => "protocol_violation",
            4013 => "disconnected",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_retry_with_backoff() {
        assert_eq!(CloseCode(4999).action(), CloseAction::RetryWithBackoff);
        assert_eq!(CloseCode(1006).action(), CloseAction::RetryWithBackoff);
        assert_eq!(CloseCode(4999).name(), "unknown");
    }

    #[test]
    fn documented_actions() {
        assert_eq!(CloseCode::NORMAL.action(), CloseAction::Terminal);
        assert_eq!(CloseCode::FORBIDDEN.action(), CloseAction::Terminal);
        assert_eq!(CloseCode::DISCONNECTED.action(), CloseAction::Terminal);
        assert_eq!(
            CloseCode::TOKEN_EXPIRED.action(),
            CloseAction::Reauthenticate
        );
        assert_eq!(
            CloseCode::SERVER_DRAINING.action(),
            CloseAction::RetryAfterServerDelay
        );
        assert_eq!(
            CloseCode::SESSION_EXPIRED.action(),
            CloseAction::RetryNewSession
        );
        assert_eq!(CloseCode::SUPERSEDED.action(), CloseAction::Superseded);
    }
}
