//! Standard tokens against the real server (`POST /v1/ticket`, then a WebSocket): RS256, ES256
//! and EdDSA tokens signed with real keys (test-only PEMs in `tests/fixtures/jwt/`), keys from
//! PEM files and from a JWKS served over HTTP, and the tokens that must be refused: forged,
//! expired, not yet valid, wrong `kid`, wrong `aud`/`iss`, and `alg` confusion.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::get;
use common::{fast_config, start, Server, Ws};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use rtlink_protocol::{ClientFrame, ServerFrame};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "rtlink";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn key(alg: Algorithm, private: &str) -> EncodingKey {
    let pem = read(private);
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => panic!("no fixture for {alg:?}"),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims as an identity provider issues them.
fn idp_claims(user: &str) -> Value {
    json!({
        "sub": user, "name": format!("{user} name"), "iss": ISSUER, "aud": AUDIENCE,
        "iat": now(), "nbf": now(), "exp": now() + 600, "rooms": ["chat:*"],
    })
}

fn sign(alg: Algorithm, private: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key(alg, private)).unwrap()
}

/// `POST /v1/ticket`'s status and JSON body.
async fn ticket(s: &Server, token: &str) -> (u16, Value) {
    let resp = s
        .http
        .post(s.url("/v1/ticket"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn accepted(s: &Server, token: &str) -> String {
    let (status, body) = ticket(s, token).await;
    assert_eq!(status, 200, "refused: {body}");
    body["ticket"].as_str().unwrap().to_owned()
}

async fn refused(s: &Server, token: &str, why: &str) {
    let (status, body) = ticket(s, token).await;
    assert_eq!(status, 401, "{why}: accepted");
    assert_eq!(body["error"], "unauthorized", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(why),
        "{why}: {body}"
    );
}

/// Opens a WebSocket with `ticket` and subscribes to `room`: the `subscribed` or `nack`.
async fn try_subscribe(s: &Server, ticket: &str, room: &str) -> ServerFrame {
    let mut ws = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Hello { v: 1, resume: None }).await;
    let welcome = ws.recv().await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    ws.send(&ClientFrame::Subscribe {
        room: room.into(),
        since: None,
        epoch: None,
        history: None,
    })
    .await;
    ws.recv_until(|f| matches!(f, ServerFrame::Subscribed { .. } | ServerFrame::Nack { .. }))
        .await
}

/// A server that trusts an identity provider only: no shared secret, no demo tokens.
fn idp_config() -> rtlink_server::Config {
    let mut c = fast_config();
    c.auth_secret = None;
    c.demo_auth = false;
    c.auth_issuers = vec![ISSUER.into()];
    c.auth_audiences = vec![AUDIENCE.into()];
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_and_what_is_refused() {
    let mut c = idp_config();
    c.auth_public_keys = vec![
        fixture("rsa-public.pem"),
        fixture("ec-public.pem"),
        fixture("ed-public.pem"),
    ];
    let s = start(c).await;

    for (alg, private) in [
        (Algorithm::RS256, "rsa-private.pem"),
        (Algorithm::PS256, "rsa-private.pem"),
        (Algorithm::ES256, "ec-private.pem"),
        (Algorithm::EdDSA, "ed-private.pem"),
    ] {
        let t = accepted(&s, &sign(alg, private, None, &idp_claims("ana"))).await;
        let sub = try_subscribe(&s, &t, "chat:general").await;
        assert!(
            matches!(sub, ServerFrame::Subscribed { .. }),
            "{alg:?}: {sub:?}"
        );
    }
    // The rooms claim still limits what a user may join.
    let t = accepted(
        &s,
        &sign(
            Algorithm::RS256,
            "rsa-private.pem",
            None,
            &idp_claims("ana"),
        ),
    )
    .await;
    let nack = try_subscribe(&s, &t, "admin").await;
    assert!(
        matches!(&nack, ServerFrame::Nack { code, .. } if code.as_str() == "forbidden"),
        "{nack:?}"
    );

    // Forged: signed with a key the server does not have.
    refused(
        &s,
        &sign(
            Algorithm::RS256,
            "rsa2-private.pem",
            None,
            &idp_claims("ana"),
        ),
        "signature",
    )
    .await;
    // Tampered: a valid token with its claims swapped.
    let good = sign(Algorithm::ES256, "ec-private.pem", None, &idp_claims("ana"));
    let parts: Vec<&str> = good.split('.').collect();
    let evil = base64_url(&idp_claims("admin").to_string());
    refused(
        &s,
        &format!("{}.{evil}.{}", parts[0], parts[2]),
        "signature",
    )
    .await;

    let mut expired = idp_claims("ana");
    expired["exp"] = json!(now() - 60);
    refused(
        &s,
        &sign(Algorithm::RS256, "rsa-private.pem", None, &expired),
        "expired",
    )
    .await;
    let mut early = idp_claims("ana");
    early["nbf"] = json!(now() + 300);
    refused(
        &s,
        &sign(Algorithm::RS256, "rsa-private.pem", None, &early),
        "nbf",
    )
    .await;
    let mut skewed = idp_claims("ana");
    skewed["nbf"] = json!(now() + 3);
    accepted(
        &s,
        &sign(Algorithm::RS256, "rsa-private.pem", None, &skewed),
    )
    .await;

    let mut wrong_aud = idp_claims("ana");
    wrong_aud["aud"] = json!("another-app");
    refused(
        &s,
        &sign(Algorithm::RS256, "rsa-private.pem", None, &wrong_aud),
        "aud",
    )
    .await;
    let mut no_aud = idp_claims("ana");
    no_aud.as_object_mut().unwrap().remove("aud");
    refused(
        &s,
        &sign(Algorithm::RS256, "rsa-private.pem", None, &no_aud),
        "aud",
    )
    .await;
    let mut wrong_iss = idp_claims("ana");
    wrong_iss["iss"] = json!("https://evil.test");
    refused(
        &s,
        &sign(Algorithm::ES256, "ec-private.pem", None, &wrong_iss),
        "iss",
    )
    .await;

    // Alg confusion: HS256 "signed" with the public key as the secret.
    for public in ["rsa-public.pem", "ec-public.pem"] {
        let secret = EncodingKey::from_secret(&read(public)).unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &idp_claims("ana"), &secret)
            .unwrap();
        refused(&s, &t, "algorithm").await;
    }
    // alg none.
    let none = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        base64_url(&idp_claims("ana").to_string())
    );
    refused(&s, &none, "well-formed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_confusion_is_refused_also_beside_a_secret() {
    // With a secret *and* a public key, an HS256 token is checked with the secret only.
    let mut c = fast_config();
    c.auth_public_keys = vec![fixture("rsa-public.pem")];
    let s = start(c).await;
    let secret = EncodingKey::from_secret(&read("rsa-public.pem")).unwrap();
    let claims = json!({"sub": "ana", "exp": now() + 600, "rooms": ["*"]});
    let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret).unwrap();
    refused(&s, &t, "signature").await;
    accepted(&s, &s.token("ana")).await;
    accepted(
        &s,
        &sign(Algorithm::RS256, "rsa-private.pem", None, &claims),
    )
    .await;
}

/// A JWKS endpoint on loopback whose key set the test changes.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u32>>,
    /// While set, the endpoint answers 503 (the provider is down).
    down: Arc<Mutex<bool>>,
}

async fn jwks_server(keys: Value) -> JwksServer {
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(Mutex::new(0));
    let down = Arc::new(Mutex::new(false));
    let (k, f, d) = (keys.clone(), fetches.clone(), down.clone());
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let (k, f, d) = (k.clone(), f.clone(), d.clone());
            async move {
                *f.lock() += 1;
                if *d.lock() {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                axum::Json(k.lock().clone()).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    JwksServer {
        url,
        keys,
        fetches,
        down,
    }
}

fn jwk(alg: Algorithm, private: &str, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&key(alg, private), alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn set(keys: Vec<Jwk>) -> Value {
    serde_json::to_value(JwkSet { keys }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_by_kid_and_rotation() {
    let idp = jwks_server(set(vec![
        jwk(Algorithm::RS256, "rsa-private.pem", "rsa-1"),
        jwk(Algorithm::ES256, "ec-private.pem", "ec-1"),
    ]))
    .await;
    let mut c = idp_config();
    c.auth_jwks = Some(idp.url.clone());
    let s = start(c).await;

    // The first fetch happens in the background at start: wait for it (bounded) through the API.
    let rs = sign(
        Algorithm::RS256,
        "rsa-private.pem",
        Some("rsa-1"),
        &idp_claims("ana"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ticket(&s, &rs).await;
        if status == 200 {
            break;
        }
        assert_eq!(
            status, 503,
            "before the keys load the answer is retry-later: {body}"
        );
        assert!(tokio::time::Instant::now() < deadline, "JWKS never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = accepted(
        &s,
        &sign(
            Algorithm::ES256,
            "ec-private.pem",
            Some("ec-1"),
            &idp_claims("ana"),
        ),
    )
    .await;
    assert!(matches!(
        try_subscribe(&s, &t, "chat:x").await,
        ServerFrame::Subscribed { .. }
    ));

    // A kid the set does not have; a known kid on a token signed by another key.
    refused(
        &s,
        &sign(
            Algorithm::RS256,
            "rsa-private.pem",
            Some("nope"),
            &idp_claims("ana"),
        ),
        "kid",
    )
    .await;
    refused(
        &s,
        &sign(
            Algorithm::RS256,
            "rsa2-private.pem",
            Some("rsa-1"),
            &idp_claims("ana"),
        ),
        "signature",
    )
    .await;
    // The kid of an EC key on an RS256 token.
    refused(
        &s,
        &sign(
            Algorithm::RS256,
            "rsa-private.pem",
            Some("ec-1"),
            &idp_claims("ana"),
        ),
        "algorithm",
    )
    .await;
    let mut wrong_aud = idp_claims("ana");
    wrong_aud["aud"] = json!("another-app");
    refused(
        &s,
        &sign(
            Algorithm::RS256,
            "rsa-private.pem",
            Some("rsa-1"),
            &wrong_aud,
        ),
        "aud",
    )
    .await;

    // The provider rotates: a token with the new kid makes the server fetch the set again.
    *idp.keys.lock() = set(vec![jwk(Algorithm::RS256, "rsa2-private.pem", "rsa-2")]);
    let fetched = *idp.fetches.lock();
    let rotated = sign(
        Algorithm::RS256,
        "rsa2-private.pem",
        Some("rsa-2"),
        &idp_claims("ana"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // Reloads for unknown kids are rate-limited (the refusal above may have just used one).
        let (status, _) = ticket(&s, &rotated).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotated key never picked up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(*idp.fetches.lock() > fetched);
    // The old key is gone with the old set.
    refused(&s, &rs, "kid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_provider_down_at_start_is_retried_on_demand() {
    let mut key = jwk(Algorithm::ES256, "ec-private.pem", "unused");
    key.common.key_id = None;
    let idp = jwks_server(set(vec![key])).await;
    *idp.down.lock() = true;
    let mut c = idp_config();
    c.auth_jwks = Some(idp.url.clone());
    let s = start(c).await;
    // A token without a kid: no rotation to trigger a reload, only the missing key set.
    let token = sign(Algorithm::ES256, "ec-private.pem", None, &idp_claims("ana"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while *idp.fetches.lock() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no fetch at start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = ticket(&s, &token).await;
    assert_eq!(status, 503, "keys not loaded yet: retry later, {body}");
    assert_eq!(body["error"], "overloaded");
    *idp.down.lock() = false;
    // Well before the 10-minute refresh: requests retry the load (at most every 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = ticket(&s, &token).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key set never loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_rooms_claim_and_rooms_for_everyone() {
    let path = std::env::temp_dir().join(format!("rtlink-jwks-{:x}.json", rand::random::<u64>()));
    std::fs::write(
        &path,
        set(vec![jwk(Algorithm::EdDSA, "ed-private.pem", "ed")]).to_string(),
    )
    .unwrap();
    let mut c = idp_config();
    c.auth_issuers.clear();
    c.auth_audiences.clear();
    c.auth_jwks = Some(path.display().to_string());
    c.auth_rooms_claim = "scope".into();
    c.auth_default_rooms = vec!["lobby".into()];
    let s = start(c).await;
    let _ = std::fs::remove_file(&path);

    // An identity provider that knows nothing of rooms: only the default room, and one's own.
    let bare = json!({"sub": "auth0|ana", "exp": now() + 600});
    let t = accepted(
        &s,
        &sign(Algorithm::EdDSA, "ed-private.pem", Some("ed"), &bare),
    )
    .await;
    assert!(matches!(
        try_subscribe(&s, &t, "lobby").await,
        ServerFrame::Subscribed { .. }
    ));
    let t = accepted(
        &s,
        &sign(Algorithm::EdDSA, "ed-private.pem", Some("ed"), &bare),
    )
    .await;
    assert!(matches!(
        try_subscribe(&s, &t, "user:auth0:7Cana").await,
        ServerFrame::Subscribed { .. }
    ));
    let t = accepted(
        &s,
        &sign(Algorithm::EdDSA, "ed-private.pem", Some("ed"), &bare),
    )
    .await;
    assert!(matches!(
        try_subscribe(&s, &t, "chat:x").await,
        ServerFrame::Nack { .. }
    ));
    // Rooms in a space-separated `scope`.
    let scoped = json!({"sub": "ana", "exp": now() + 600, "scope": "openid chat:*"});
    let t = accepted(
        &s,
        &sign(Algorithm::EdDSA, "ed-private.pem", Some("ed"), &scoped),
    )
    .await;
    assert!(matches!(
        try_subscribe(&s, &t, "chat:x").await,
        ServerFrame::Subscribed { .. }
    ));
    // Without a secret no HS256 token is accepted.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &scoped,
        &EncodingKey::from_secret(b"test-secret").unwrap(),
    )
    .unwrap();
    refused(&s, &hs, "algorithm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_files_stop_the_server_from_starting() {
    let mut c = fast_config();
    c.auth_public_keys = vec![fixture("rsa-private.pem")];
    let err = rtlink_server::AppState::new(c).err().unwrap().to_string();
    assert!(err.contains("private key"), "{err}");
    let mut c = fast_config();
    c.auth_public_keys = vec![fixture("missing.pem")];
    assert!(rtlink_server::AppState::new(c).is_err());
    let mut c = fast_config();
    c.auth_jwks = Some(fixture("rsa-public.pem").display().to_string());
    let err = rtlink_server::AppState::new(c).err().unwrap().to_string();
    assert!(err.contains("JWKS"), "{err}");
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}
