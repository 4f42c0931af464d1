//! Authentication: who a request is ([`Claims`], from a token in [`token`]), and the short-lived
//! single-use tickets a browser trades a token for ([`tickets`]), because WebSocket and
//! EventSource cannot carry an `Authorization` header.
//!
//! Tickets and tokens are secrets: nothing here logs them.

mod tickets;
mod token;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::broker::now_ms;

pub use tickets::TicketRefusal;

/// The claims of an rtlink token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Room patterns; `*` matches any run of characters.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    pub fn may_access(&self, room: &str) -> bool {
        self.rooms.iter().any(|p| pattern_matches(p, room))
    }

    pub fn expired(&self) -> bool {
        self.exp.saturating_mul(1000) <= now_ms()
    }
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

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Malformed,
    BadSignature,
    Expired,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "token is not a valid HS256 JWT",
            Self::BadSignature => "token signature does not verify",
            Self::Expired => "token expired",
        })
    }
}

pub struct Auth {
    secret: Vec<u8>,
    /// Signs demo tokens (demo mode only), never the secret itself: a demo token is then
    /// worthless to a server that shares the secret but does not run the demo.
    demo_secret: Option<Vec<u8>>,
    ticket_ttl: Duration,
    tickets: Mutex<tickets::Tickets>,
}

impl Auth {
    pub fn new(secret: Vec<u8>, ticket_ttl: Duration) -> Self {
        Self {
            secret,
            demo_secret: None,
            ticket_ttl,
            tickets: Mutex::new(tickets::Tickets::default()),
        }
    }

    /// Turns demo tokens on, signed with `key` (which must differ from the secret).
    pub fn with_demo_secret(mut self, key: Vec<u8>) -> Self {
        self.demo_secret = Some(key);
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
}
