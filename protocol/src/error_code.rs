//! Error codes carried by a `nack` (a refused publish, subscribe or presence update) and by the JSON
//! body of an HTTP error response.

use serde::{Deserialize, Serialize};

/// Why a request was refused. Unknown codes from a newer peer decode as [`ErrorCode::Unknown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The token's room patterns do not allow this room.
    Forbidden,
    /// The room name is empty, too long or has characters outside `[A-Za-z0-9_.:-]`.
    InvalidRoom,
    /// The payload is larger than the server allows.
    TooLarge,
    /// The per-connection token bucket is empty; slow down.
    RateLimited,
    /// Publish, presence or typing in a room the session has not subscribed to.
    NotSubscribed,
    /// Too many rooms on one session.
    TooManyRooms,
    /// Missing, forged, expired or reused ticket or token (HTTP 401).
    Unauthorized,
    /// The request's Origin is not allowed (HTTP 403).
    OriginNotAllowed,
    /// The session to act on does not exist (HTTP 404 on `/v1/send` and `/v1/poll`).
    UnknownSession,
    /// Too many connections in total or from one address (HTTP 503 / 429).
    Overloaded,
    /// The transport is disabled on this server.
    TransportDisabled,
    /// A request that does not parse.
    BadRequest,
    /// The server failed; retrying may succeed.
    Internal,
    /// The client gave up waiting for the server's ack (never sent by a server).
    Timeout,
    /// The client was closed before the server's ack (never sent by a server).
    Closed,
    /// A publish that cannot be resent safely any more: its first transmission is older than
    /// the server's dedupe window allows (never sent by a server).
    Expired,
    /// The peer speaks another protocol version (HTTP 400 on `POST /v1/ticket`; close 4002 on a
    /// transport).
    UnsupportedVersion,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code except [`ErrorCode::Unknown`], for name lookups.
    pub const ALL: [ErrorCode; 17] = [
        Self::Forbidden,
        Self::InvalidRoom,
        Self::TooLarge,
        Self::RateLimited,
        Self::NotSubscribed,
        Self::TooManyRooms,
        Self::Unauthorized,
        Self::OriginNotAllowed,
        Self::UnknownSession,
        Self::Overloaded,
        Self::TransportDisabled,
        Self::BadRequest,
        Self::Internal,
        Self::Timeout,
        Self::Closed,
        Self::Expired,
        Self::UnsupportedVersion,
    ];

    /// The code with this wire name; [`ErrorCode::Unknown`] for a name this version does not know.
    /// (For decoders that do not use serde, like the browser glue.)
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or(Self::Unknown)
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::InvalidRoom => "invalid_room",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::NotSubscribed => "not_subscribed",
            Self::TooManyRooms => "too_many_rooms",
            Self::Unauthorized => "unauthorized",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::UnknownSession => "unknown_session",
            Self::Overloaded => "overloaded",
            Self::TransportDisabled => "transport_disabled",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Expired => "expired",
            Self::UnsupportedVersion => "unsupported_version",
            Self::Unknown => "unknown",
        }
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, alloc::format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::from_name(code.as_str()), code);
        }
        assert_eq!(ErrorCode::from_name("later"), ErrorCode::Unknown);
    }
}
