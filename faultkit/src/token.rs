//! HS256 tokens for test users, signed like `rtlink-server --auth-secret` expects (docs/PROTOCOL.md,
//! "Authentication"). Kept here, not borrowed from the server, so the harness speaks only the
//! documented protocol.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The secret the harness starts servers with.
pub const TEST_SECRET: &str = "faultkit-test-secret-of-at-least-32-bytes";

/// A token for `user` (display name `name`), valid for `rooms` patterns and `ttl_secs` seconds.
pub fn sign(secret: &str, user: &str, name: &str, rooms: &[&str], ttl_secs: u64) -> String {
    sign_for(secret, user, name, rooms, i64::try_from(ttl_secs).unwrap_or(i64::MAX))
}

/// Like [`sign`], with a lifetime that may be negative (a token that expired that long ago).
pub fn sign_for(secret: &str, user: &str, name: &str, rooms: &[&str], ttl_secs: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let exp = i64::try_from(now).unwrap_or(i64::MAX).saturating_add(ttl_secs).max(0);
    let claims = serde_json::json!({ "sub": user, "name": name, "rooms": rooms, "exp": exp });
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{body}");
    let sig = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => String::new(),
    };
    format!("{input}.{sig}")
}
