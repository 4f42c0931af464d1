//! The claims a session acts with, renewed by a resume with a newer token.

use parking_lot::Mutex;

use crate::auth::Claims;

/// The claims a session acts with. The user (`sub`) is fixed for the session's life; the rest
/// (display name, rooms, expiry) is replaced when the client resumes with a newer token, so a
/// re-authenticated session runs on the new token's claims.
pub struct SessionClaims {
    /// User id.
    pub sub: String,
    current: Mutex<Claims>,
}

impl SessionClaims {
    pub fn new(claims: Claims) -> Self {
        Self {
            sub: claims.sub.clone(),
            current: Mutex::new(claims),
        }
    }

    /// Display name.
    pub fn name(&self) -> String {
        self.current.lock().name.clone()
    }

    pub fn may_access(&self, room: &str) -> bool {
        self.current.lock().may_access(room)
    }

    pub fn expired(&self) -> bool {
        self.current.lock().expired()
    }

    /// The current claims.
    pub fn get(&self) -> Claims {
        self.current.lock().clone()
    }

    /// Adopts a newer token's claims (same user). Returns false, changing nothing, for
    /// another user's claims.
    pub fn replace(&self, claims: Claims) -> bool {
        if claims.sub != self.sub {
            return false;
        }
        *self.current.lock() = claims;
        true
    }
}
