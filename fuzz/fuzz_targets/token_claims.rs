//! The server's token check past the signature: the fuzzer writes the claims (any bytes as the
//! JWT payload) and the target signs them with the server's secret, so `exp`, `nbf`, `sub`,
//! `rooms` and friends of every shape reach the claims parser. Never panics; what verifies has
//! a user, is not expired, and re-signs to the same claims.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rtlink_server::auth::{Auth, Claims};
use sha2::Sha256;

const SECRET: &[u8] = b"fuzz-secret-of-at-least-thirty-two-bytes";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| Auth::new(SECRET.to_vec(), Duration::from_secs(30)))
}

/// An HS256 JWT with `payload` as its (raw) claims.
fn signed(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("HMAC takes any key");
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fuzz_target!(|payload: &[u8]| {
    let Ok(claims) = runtime().block_on(auth().verify(&signed(payload))) else { return };
    assert!(!claims.sub.is_empty(), "verified without a user: {claims:?}");
    let resigned = auth().sign(&claims);
    let again: Claims = runtime().block_on(auth().verify(&resigned)).expect("re-signed claims verify");
    assert_eq!((&again.sub, &again.name, &again.rooms), (&claims.sub, &claims.name, &claims.rooms));
    assert!(again.exp >= claims.exp);
});
