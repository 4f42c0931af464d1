//! JWKS: an identity provider's public keys (`--auth-jwks FILE_OR_URL`), selected by `kid`.
//!
//! The set is loaded at start (a file must load; a URL that fails is logged and retried, and
//! tokens get `503` until it loads), then again every refresh interval, and also when a token
//! names a `kid` the set does not have (the provider rotated its keys), at most once per
//! [`MIN_RELOAD_GAP`] so a flood of made-up `kid`s cannot turn into a flood of fetches. A failed
//! reload keeps the keys it had.
//!
//! Keys meant for encryption (`"use": "enc"`), symmetric keys (`oct`: a shared secret does not
//! belong in a published key set) and key types this server cannot check are skipped. A key
//! with an `alg` checks only that algorithm; without, every algorithm of its type and curve.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::Value;

use super::token::{VerifyKey, RSA_ALGS};

/// Reloads triggered by an unknown `kid` are at least this far apart.
const MIN_RELOAD_GAP: Duration = Duration::from_secs(5);
/// A fetch of the URL gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted.
const MAX_BYTES: usize = 1 << 20;
/// Most keys taken from one set.
const MAX_KEYS: usize = 100;

enum Source {
    File(PathBuf),
    Url(String, reqwest::Client),
}

pub(super) struct Jwks {
    source: Source,
    /// `None` until the first successful load.
    keys: RwLock<Option<Arc<Vec<VerifyKey>>>>,
    last_attempt: Mutex<Option<Instant>>,
    /// One load at a time; tokens that wait for it then see its result.
    loading: tokio::sync::Mutex<()>,
}

impl Jwks {
    /// Loads a file at once (failing if it does not parse) and starts the periodic reload; a
    /// URL is fetched by that task. Must run inside a Tokio runtime.
    pub fn start(source: &str, every: Duration) -> anyhow::Result<Arc<Self>> {
        let source = if source.starts_with("https://") || source.starts_with("http://") {
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .map_err(|e| anyhow::anyhow!("--auth-jwks: HTTP client: {e}"))?;
            Source::Url(source.to_owned(), client)
        } else {
            Source::File(PathBuf::from(source))
        };
        let jwks = Arc::new(Self {
            source,
            keys: RwLock::new(None),
            last_attempt: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
        });
        if let Source::File(path) = &jwks.source {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--auth-jwks {}: {e}", path.display()))?;
            let keys = parse(&bytes)
                .map_err(|e| anyhow::anyhow!("--auth-jwks {}: {e}", path.display()))?;
            *jwks.keys.write() = Some(Arc::new(keys));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("--auth-jwks needs a Tokio runtime"))?;
        runtime.spawn(reload_every(Arc::downgrade(&jwks), every));
        Ok(jwks)
    }

    /// True once a key set has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.keys.read().is_some()
    }

    fn lookup(&self, kid: &str) -> Option<VerifyKey> {
        let keys = self.keys.read().clone()?;
        keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned()
    }

    /// The key with id `kid`, reloading the set once if it is not there.
    pub async fn find(&self, kid: &str) -> Option<VerifyKey> {
        if let Some(key) = self.lookup(kid) {
            return Some(key);
        }
        self.reload(false).await;
        self.lookup(kid)
    }

    /// Tries to load the set if it never loaded (at most once per [`MIN_RELOAD_GAP`]).
    pub async fn load_if_missing(&self) {
        if !self.is_loaded() {
            self.reload(false).await;
        }
    }

    /// The keys that have no `kid` (for tokens without one).
    pub fn without_kid(&self) -> Vec<VerifyKey> {
        let Some(keys) = self.keys.read().clone() else {
            return Vec::new();
        };
        keys.iter().filter(|k| k.kid.is_none()).cloned().collect()
    }

    /// Loads the set again; unless `always`, not if the last attempt was moments ago.
    async fn reload(&self, always: bool) {
        let _one = self.loading.lock().await;
        {
            let mut last = self.last_attempt.lock();
            if !always && last.is_some_and(|t| t.elapsed() < MIN_RELOAD_GAP) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await.and_then(|bytes| parse(&bytes)) {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS loaded");
                *self.keys.write() = Some(Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS reload failed; keeping the keys loaded before")
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match &self.source {
            Source::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
            Source::Url(url, client) => {
                // The URL itself is configuration, not a secret; the body is public keys.
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", resp.status()));
                }
                if resp.content_length().is_some_and(|n| n > MAX_BYTES as u64) {
                    return Err(format!("GET {url}: larger than {MAX_BYTES} bytes"));
                }
                let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
                if body.len() > MAX_BYTES {
                    return Err(format!("GET {url}: larger than {MAX_BYTES} bytes"));
                }
                Ok(body.to_vec())
            }
        }
    }
}

/// Reloads the set every `every` until it is dropped (a URL: first at once).
async fn reload_every(jwks: Weak<Jwks>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        let Some(jwks) = jwks.upgrade() else { return };
        let skip = first && matches!(jwks.source, Source::File(_));
        first = false;
        if !skip {
            jwks.reload(true).await;
        }
    }
}

/// The usable signature keys of a JWKS document.
fn parse(bytes: &[u8]) -> Result<Vec<VerifyKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for raw in set.keys.into_iter().take(MAX_KEYS) {
        match signature_key(raw) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "JWKS: skipping a key"),
        }
    }
    if keys.is_empty() {
        return Err(String::from(
            "no usable signature key (RSA, EC P-256/P-384, Ed25519)",
        ));
    }
    Ok(keys)
}

fn signature_key(raw: Value) -> Result<Option<VerifyKey>, String> {
    if raw.get("use").and_then(Value::as_str) == Some("enc") {
        return Ok(None);
    }
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| e.to_string())?;
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => match Algorithm::try_from(declared) {
            Ok(alg) if by_type.contains(&alg) => vec![alg],
            _ => return Ok(None),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(VerifyKey {
        key,
        algorithms,
        kid: jwk.common.key_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_what_cannot_check_signatures() {
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "sig", "alg": "ES256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "crv": "P-256", "kid": "lying", "alg": "RS256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "XYZ", "kid": "future"}
        ]});
        let keys = parse(set.to_string().as_bytes()).expect("one usable key");
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone()).collect();
        assert_eq!(kids, [Some(String::from("sig"))]);
        assert_eq!(keys[0].algorithms, [Algorithm::ES256]);
        assert!(parse(b"{\"keys\": []}").is_err());
        assert!(parse(b"not json").is_err());
    }
}
