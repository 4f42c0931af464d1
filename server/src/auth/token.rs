//! Tokens: HS256 JWTs, signed and checked by hand with `hmac` + `sha2`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{random_token, Auth, AuthError, Claims};
use crate::broker::now_ms;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn sign_with(key: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signing_input = format!("{header}.{body}");
    let mut mac = mac(key);
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

impl Auth {
    /// Signs claims into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        sign_with(&self.secret, claims)
    }

    /// Checks a JWT's algorithm, signature (constant time) and expiry. In demo mode a token
    /// signed with the demo key is accepted too.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        match self.verify_with(&self.secret, token) {
            Err(AuthError::BadSignature) => match &self.demo_secret {
                Some(demo) => self.verify_with(demo, token),
                None => Err(AuthError::BadSignature),
            },
            other => other,
        }
    }

    fn verify_with(&self, key: &[u8], token: &str) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or(AuthError::Malformed)?;
        if header.alg != "HS256" {
            return Err(AuthError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = mac(key);
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(b.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(b)
            .ok()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or(AuthError::Malformed)?;
        if claims.expired() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// A token for anyone, for the demo (rooms `*`, one hour), signed with the demo key; `None`
    /// when demo mode is off.
    pub fn demo_token(&self, name: &str) -> Option<String> {
        let key = self.demo_secret.as_ref()?;
        let id = format!("demo-{}", random_token(6));
        let claims = Claims {
            sub: id,
            name: name.chars().take(64).collect(),
            rooms: vec!["*".into()],
            exp: now_ms() / 1000 + 3600,
        };
        Some(sign_with(key, &claims))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn auth() -> Auth {
        Auth::new(b"k".to_vec(), Duration::from_secs(30))
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u".into(),
            name: "U".into(),
            rooms: vec!["chat:*".into()],
            exp,
        }
    }

    #[test]
    fn sign_verify_round_trip_and_forgery() {
        let a = auth();
        let c = claims(now_ms() / 1000 + 60);
        let t = a.sign(&c);
        assert_eq!(a.verify(&t), Ok(c.clone()));
        let other = Auth::new(b"other".to_vec(), Duration::from_secs(30));
        assert_eq!(other.verify(&t), Err(AuthError::BadSignature));
        assert_eq!(a.verify("a.b"), Err(AuthError::Malformed));
        assert_eq!(a.verify(&a.sign(&claims(1))), Err(AuthError::Expired));
    }

    #[test]
    fn demo_tokens_are_not_signed_with_the_secret() {
        let production = auth();
        let demo = auth().with_demo_secret(b"demo-key".to_vec());
        assert_eq!(production.demo_token("Ana"), None);
        let Some(t) = demo.demo_token("Ana") else {
            panic!("demo mode is on")
        };
        assert!(demo.verify(&t).is_ok());
        assert_eq!(
            production.verify(&t),
            Err(AuthError::BadSignature),
            "same secret, no demo"
        );
        assert!(demo
            .verify(&production.sign(&claims(now_ms() / 1000 + 60)))
            .is_ok());
    }
}
