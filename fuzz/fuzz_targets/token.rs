//! The server's token check on untrusted strings (`Authorization: Bearer …` on
//! `POST /v1/ticket`): never panics, and accepts only tokens it signed itself.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rtlink_server::auth::{Auth, Claims};

const SECRET: &[u8] = b"fuzz-secret-of-at-least-thirty-two-bytes";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| Auth::new(SECRET.to_vec(), Duration::from_secs(30)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    if let Ok(claims) = runtime().block_on(auth().verify(token)) {
        // Re-signing verified claims verifies to the same user and rooms. (`exp` comes back
        // with the clock leeway added: the moment this server stops accepting the token.)
        let resigned = auth().sign(&claims);
        let again: Claims = runtime().block_on(auth().verify(&resigned)).expect("re-signed claims verify");
        assert_eq!((&again.sub, &again.name, &again.rooms), (&claims.sub, &claims.name, &claims.rooms));
        assert!(again.exp >= claims.exp);
    }
});
