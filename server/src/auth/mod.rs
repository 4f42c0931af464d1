//! Authentication: who a request is ([`Claims`], from a JWT checked in [`token`] against keys
//! from a secret, PEM files or a JWKS in [`jwks`]), and the short-lived single-use tickets a
//! browser trades a token for ([`tickets`]), because WebSocket and EventSource cannot carry an
//! `Authorization` header.
//!
//! Every user also has a **user room** ([`user_room`]): only that user may subscribe to it,
//! whatever their room patterns say, so a backend can notify all of one user's tabs.
//!
//! Tickets and tokens are secrets: nothing here logs them.

mod jwks;
mod tickets;
mod token;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::broker::now_ms;

pub use tickets::{Grant, RedeemError, TicketRefusal};
pub use token::TokenSettings;

/// The claims of an rtlink token, as the rest of the server sees them (whatever the identity
/// provider called them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Room patterns; `*` matches any run of characters. Includes the server's default rooms.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch: when this server stops accepting the token (its
    /// `exp` claim plus the clock leeway).
    pub exp: u64,
}

impl Claims {
    /// True if this user may subscribe to `room`: their own user room, or a room (outside the
    /// user-room namespace) matched by one of their patterns. No pattern reaches a user room.
    pub fn may_access(&self, room: &str) -> bool {
        if room.starts_with(USER_ROOM_PREFIX) {
            return user_room(&self.sub).is_some_and(|own| own == room);
        }
        self.rooms.iter().any(|p| pattern_matches(p, room))
    }

    pub fn expired(&self) -> bool {
        self.exp.saturating_mul(1000) <= now_ms()
    }
}

/// Rooms whose name starts with this belong to one user each ([`user_room`]).
pub const USER_ROOM_PREFIX: &str = "user:";

/// Longest room name (see [`crate::rooms::valid_room`]).
const MAX_ROOM_LEN: usize = 128;

/// The user room of `user`: `user:` then the user id, with every byte outside
/// `[A-Za-z0-9_.-]` written as `:` and two upper-case hex digits (`auth0|42` →
/// `user:auth0:7C42`). The escape keeps the name within the room-name rules and makes it
/// unambiguous (`:` itself is escaped), so two users never share a room. `None` when the
/// result would be longer than a room name may be.
pub fn user_room(user: &str) -> Option<String> {
    if user.is_empty() {
        return None;
    }
    let mut room = String::with_capacity(USER_ROOM_PREFIX.len() + user.len());
    room.push_str(USER_ROOM_PREFIX);
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            room.push(char::from(b));
        } else {
            room.push_str(&format!(":{b:02X}"));
        }
        if room.len() > MAX_ROOM_LEN {
            return None;
        }
    }
    Some(room)
}

/// Glob match where `*` matches any run of characters (including none).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    // Iterative wildcard match with backtracking to the last star: O(|p|·|t|) worst case.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Why a token was refused. The text goes into the `401` body: it says what is wrong without
/// echoing the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Not a JWT, or a part of it does not decode.
    Malformed,
    /// The `alg` is not one this server accepts for the key that would check it (e.g. `HS256`
    /// when only public keys are configured: the "alg confusion" attack).
    Algorithm,
    /// No configured key has the token's `kid` (also after refreshing the JWKS).
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A required claim (`sub`, `exp`, and `iss`/`aud` when configured) is absent or empty.
    MissingClaim(&'static str),
    /// The JWKS could not be loaded yet; the client should retry later.
    KeysUnavailable,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => f.write_str("token is not a well-formed JWT"),
            Self::Algorithm => f.write_str("token algorithm is not accepted by this server"),
            Self::UnknownKey => f.write_str("token key id (kid) is not known to this server"),
            Self::BadSignature => f.write_str("token signature does not verify"),
            Self::Expired => f.write_str("token expired"),
            Self::NotYetValid => f.write_str("token is not valid yet (nbf)"),
            Self::WrongIssuer => f.write_str("token issuer (iss) is not accepted"),
            Self::WrongAudience => f.write_str("token audience (aud) is not accepted"),
            Self::MissingClaim(c) => write!(f, "token has no `{c}` claim"),
            Self::KeysUnavailable => f.write_str("the server's signing keys are not loaded yet"),
        }
    }
}

pub struct Auth {
    tokens: token::Verifier,
    ticket_ttl: Duration,
}

impl Auth {
    /// Loads the keys of `settings` (PEM files, a JWKS file; a JWKS URL is fetched in the
    /// background, so this must run inside a Tokio runtime when one is configured).
    pub fn from_settings(settings: TokenSettings, ticket_ttl: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            tokens: token::Verifier::new(settings)?,
            ticket_ttl,
        })
    }

    /// An `Auth` that accepts HS256/384/512 tokens signed with `secret` and nothing else.
    pub fn new(secret: Vec<u8>, ticket_ttl: Duration) -> Self {
        Self {
            tokens: token::Verifier::with_secret(secret),
            ticket_ttl,
        }
    }

    /// Turns demo tokens on, signed with `key` (which must differ from the secret): a demo
    /// token is then worthless to a server that shares the secret but does not run the demo.
    pub fn with_demo_secret(mut self, key: Vec<u8>) -> Self {
        self.tokens.set_demo_key(&key);
        self
    }
}

/// A random URL-safe secret of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("chat:*", "chat:lobby"));
        assert!(pattern_matches("chat:*", "chat:"));
        assert!(!pattern_matches("chat:*", "dm:x"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exactly"));
    }

    #[test]
    fn user_rooms_are_valid_room_names_and_never_shared() {
        assert_eq!(user_room("ana").as_deref(), Some("user:ana"));
        assert_eq!(user_room("auth0|42").as_deref(), Some("user:auth0:7C42"));
        assert_eq!(user_room("a:b").as_deref(), Some("user:a:3Ab"));
        assert_eq!(user_room("ü").as_deref(), Some("user::C3:BC"));
        assert_ne!(
            user_room("a:7C"),
            user_room("a|"),
            "escapes are unambiguous"
        );
        for user in ["ana", "auth0|42", "a b@c.de", "ü", "x:y"] {
            let room = user_room(user).expect("short id");
            assert!(crate::rooms::valid_room(&room), "{room}");
        }
        assert_eq!(user_room(""), None);
        assert!(user_room(&"a".repeat(123)).is_some());
        assert_eq!(user_room(&"a".repeat(124)), None, "longer than a room name");
        assert_eq!(user_room(&"|".repeat(50)), None);
    }

    #[test]
    fn only_the_user_reaches_a_user_room() {
        let claims = |sub: &str, rooms: &[&str]| Claims {
            sub: sub.into(),
            name: String::new(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            exp: u64::MAX,
        };
        let ana = claims("ana", &["*"]);
        assert!(ana.may_access("user:ana"));
        assert!(ana.may_access("chat:lobby"));
        assert!(
            !ana.may_access("user:bob"),
            "a wildcard never grants a user room"
        );
        let bob = claims("bob", &["user:*", "user:ana"]);
        assert!(!bob.may_access("user:ana"), "not even an exact pattern");
        assert!(
            bob.may_access("user:bob"),
            "no pattern needed for one's own"
        );
        assert!(!claims("auth0|1", &[]).may_access("user:auth0|1"));
        assert!(claims("auth0|1", &[]).may_access("user:auth0:7C1"));
    }
}
