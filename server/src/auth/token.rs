//! Tokens: JWTs checked with the `jsonwebtoken` crate.
//!
//! Keys come from `--auth-secret` (HS256/384/512), `--auth-public-key` PEM files (RSA: RS*/PS*,
//! EC P-256/P-384: ES256/ES384, Ed25519: EdDSA) and `--auth-jwks` (see [`super::jwks`]). Which
//! key checks a token is decided by its header: an `HS*` token is checked with the secret only,
//! any other with the public keys only (so an `HS256` token "signed" with a public key is
//! refused: the alg-confusion attack), and a `kid` selects the JWKS key of that id.
//!
//! Then the claims: `exp` and `sub` always, `nbf` when present, `iss`/`aud` when configured,
//! all with a small clock leeway. The rooms come from a configurable claim (an array of
//! patterns, or a space-separated string like OAuth's `scope`) plus the server's default
//! rooms, so tokens from an identity provider that cannot add a `rooms` claim still work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{
    Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation,
};
use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::{random_token, Auth, AuthError, Claims};
use crate::broker::now_ms;
use crate::config::Config;

/// Where token keys come from and what a token must say. Built from the command line with
/// [`TokenSettings::from_config`]. No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct TokenSettings {
    /// Shared secret for `HS256`/`HS384`/`HS512` (also signs demo tokens).
    pub secret: Option<Vec<u8>>,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519).
    pub public_keys: Vec<PathBuf>,
    /// A JWKS file path or `http(s)://` URL.
    pub jwks: Option<String>,
    /// How often the JWKS is loaded again.
    pub jwks_refresh: Duration,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim holding the room patterns.
    pub rooms_claim: String,
    /// Room patterns every authenticated user gets.
    pub default_rooms: Vec<String>,
}

impl TokenSettings {
    /// Settings that accept HS* tokens signed with `secret`, with the defaults of every flag.
    pub fn with_secret(secret: Vec<u8>) -> Self {
        Self {
            secret: Some(secret),
            public_keys: Vec::new(),
            jwks: None,
            jwks_refresh: Duration::from_secs(600),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(5),
            rooms_claim: String::from("rooms"),
            default_rooms: Vec::new(),
        }
    }

    /// The token flags of `config`, with `secret` as the HS* secret (the configured one, or
    /// the demo mode's random one).
    pub fn from_config(config: &Config, secret: Option<Vec<u8>>) -> Self {
        Self {
            secret,
            public_keys: config.auth_public_keys.clone(),
            jwks: config.auth_jwks.clone(),
            jwks_refresh: config.auth_jwks_refresh,
            issuers: config.auth_issuers.clone(),
            audiences: config.auth_audiences.clone(),
            leeway: config.auth_leeway,
            rooms_claim: config.auth_rooms_claim.clone(),
            default_rooms: config.auth_default_rooms.clone(),
        }
    }

    /// True when some key source is configured besides a secret.
    pub fn has_public_keys(&self) -> bool {
        !self.public_keys.is_empty() || self.jwks.is_some()
    }
}

/// A key that checks signatures, and the algorithms it may check.
#[derive(Clone)]
pub(super) struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
    pub kid: Option<String>,
}

impl VerifyKey {
    fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
pub(super) const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Checks tokens; see the module docs.
pub(super) struct Verifier {
    hmac: Option<VerifyKey>,
    /// The secret as a signing key (tests, tools).
    signing: Option<EncodingKey>,
    /// Demo mode: the key demo tokens are signed and checked with (never the secret).
    demo: Option<(VerifyKey, EncodingKey)>,
    public: Vec<VerifyKey>,
    jwks: Option<Arc<Jwks>>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway_secs: u64,
    rooms_claim: String,
    default_rooms: Vec<String>,
}

impl Verifier {
    pub fn new(settings: TokenSettings) -> anyhow::Result<Self> {
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            anyhow::bail!("jsonwebtoken was built without exactly one crypto provider");
        }
        let public = settings
            .public_keys
            .iter()
            .map(load_pem)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let jwks = match &settings.jwks {
            Some(source) => Some(Jwks::start(source, settings.jwks_refresh)?),
            None => None,
        };
        if settings.has_public_keys() && settings.audiences.is_empty() {
            tracing::warn!(
                "public keys without --auth-audience: tokens the identity provider issued for \
                 other applications are accepted too"
            );
        }
        Ok(Self::build(settings, public, jwks))
    }

    /// A verifier of HS* tokens signed with `secret` (nothing to load, so it cannot fail).
    pub fn with_secret(secret: Vec<u8>) -> Self {
        Self::build(TokenSettings::with_secret(secret), Vec::new(), None)
    }

    fn build(settings: TokenSettings, public: Vec<VerifyKey>, jwks: Option<Arc<Jwks>>) -> Self {
        let secret = settings.secret.filter(|s| !s.is_empty());
        Self {
            hmac: secret
                .as_deref()
                .and_then(|s| DecodingKey::from_secret(s).ok())
                .map(|key| VerifyKey {
                    key,
                    algorithms: HMAC_ALGS.to_vec(),
                    kid: None,
                }),
            signing: secret
                .as_deref()
                .and_then(|s| EncodingKey::from_secret(s).ok()),
            demo: None,
            public,
            jwks,
            issuers: settings.issuers,
            audiences: settings.audiences,
            leeway_secs: settings.leeway.as_secs(),
            rooms_claim: settings.rooms_claim,
            default_rooms: settings.default_rooms,
        }
    }

    pub fn set_demo_key(&mut self, key: &[u8]) {
        let (Ok(check), Ok(sign)) = (DecodingKey::from_secret(key), EncodingKey::from_secret(key))
        else {
            return;
        };
        let check = VerifyKey {
            key: check,
            algorithms: vec![Algorithm::HS256],
            kid: None,
        };
        self.demo = Some((check, sign));
    }

    /// The keys that may check a token with this header, in the order to try them.
    async fn candidates(&self, header: &Header) -> Result<Vec<VerifyKey>, AuthError> {
        if header.alg.family() == AlgorithmFamily::Hmac {
            let demo = self.demo.as_ref().map(|(k, _)| k);
            let keys: Vec<VerifyKey> = self.hmac.iter().chain(demo).cloned().collect();
            return if keys.is_empty() {
                Err(AuthError::Algorithm)
            } else {
                Ok(keys)
            };
        }
        let family = header.alg.family();
        if let Some(jwks) = self.jwks.as_ref().filter(|j| !j.is_loaded()) {
            // The first load failed (provider down at start): try again now, rate-limited.
            jwks.load_if_missing().await;
        }
        let pems = self.public.iter().filter(|k| k.key.family() == family);
        if let (Some(kid), Some(jwks)) = (&header.kid, &self.jwks) {
            if let Some(key) = jwks.find(kid).await {
                return Ok(vec![key]);
            }
            // Not in the JWKS: only a PEM key (which has no id) may still check it.
            let pems: Vec<VerifyKey> = pems.cloned().collect();
            if pems.is_empty() {
                return Err(if jwks.is_loaded() {
                    AuthError::UnknownKey
                } else {
                    AuthError::KeysUnavailable
                });
            }
            return Ok(pems);
        }
        let mut keys: Vec<VerifyKey> = pems.cloned().collect();
        if let Some(jwks) = &self.jwks {
            keys.extend(
                jwks.without_kid()
                    .into_iter()
                    .filter(|k| k.key.family() == family),
            );
        }
        if keys.is_empty() {
            return Err(match &self.jwks {
                Some(jwks) if !jwks.is_loaded() => AuthError::KeysUnavailable,
                Some(_) => AuthError::UnknownKey,
                None => AuthError::Algorithm,
            });
        }
        Ok(keys)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if self.issuers.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.crit.as_ref().is_some_and(|c| !c.is_empty()) {
            // Extensions we do not implement must not be ignored (RFC 7515 §4.1.11).
            return Err(AuthError::Malformed);
        }
        let keys = self.candidates(&header).await?;
        let validation = self.validation(header.alg);
        let mut outcome = Err(AuthError::Algorithm);
        for key in keys.iter().filter(|k| k.allows(header.alg)) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return self.claims(data.claims),
                Err(e) => {
                    outcome = Err(map_error(e.kind()));
                    // Another key may still verify it; any other failure is final.
                    if outcome != Err(AuthError::BadSignature) {
                        break;
                    }
                }
            }
        }
        outcome
    }

    /// The server's view of a verified token's claims.
    fn claims(&self, map: Map<String, Value>) -> Result<Claims, AuthError> {
        let sub = match map.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(AuthError::MissingClaim("sub")),
        };
        let exp = map
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
            .ok_or(AuthError::MissingClaim("exp"))?
            // What the rest of the server calls expiry (tickets, the 4009 close) is the moment
            // this server stops accepting the token: its `exp` plus the clock leeway.
            .saturating_add(self.leeway_secs);
        let name = map
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut rooms: Vec<String> = match map.get(&self.rooms_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        for room in &self.default_rooms {
            if !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        Ok(Claims {
            sub,
            name,
            rooms,
            exp,
        })
    }
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "sub" => "sub",
            "iss" => "iss",
            "aud" => "aud",
            _ => "nbf",
        }),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
        _ => AuthError::Malformed,
    }
}

/// A PEM public key and the algorithms its type allows.
fn load_pem(path: &PathBuf) -> anyhow::Result<VerifyKey> {
    let pem = std::fs::read(path)
        .with_context(|| format!("--auth-public-key: cannot read {}", path.display()))?;
    if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
        anyhow::bail!(
            "--auth-public-key {}: this is a private key; give the server the public key",
            path.display()
        );
    }
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        (key, RSA_ALGS.to_vec())
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // The uncompressed point's length says the curve: 65 bytes P-256, 97 bytes P-384.
        let alg = match key.kind() {
            DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => Algorithm::ES256,
            DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => Algorithm::ES384,
            _ => anyhow::bail!(
                "--auth-public-key {}: only P-256 and P-384 EC keys are supported",
                path.display()
            ),
        };
        (key, vec![alg])
    } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        (key, vec![Algorithm::EdDSA])
    } else {
        anyhow::bail!(
            "--auth-public-key {}: not a PEM RSA, EC (P-256/P-384) or Ed25519 public key",
            path.display()
        );
    };
    Ok(VerifyKey {
        key,
        algorithms,
        kid: None,
    })
}

impl Auth {
    /// Signs claims into an HS256 JWT with the server's secret (demo tokens, tests). Empty when
    /// the server has no secret (only public keys): such a server cannot issue tokens.
    pub fn sign(&self, claims: &Claims) -> String {
        let Some(key) = &self.tokens.signing else {
            return String::new();
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).unwrap_or_default()
    }

    /// Checks a JWT: algorithm, key, signature, `exp`/`nbf`/`iss`/`aud`; see the module docs.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.tokens.verify(token).await
    }

    /// A token for anyone, for the demo (rooms `*`, one hour), signed with the demo key; `None`
    /// when demo mode is off.
    pub fn demo_token(&self, name: &str) -> Option<String> {
        let (_, key) = self.tokens.demo.as_ref()?;
        let id = format!("demo-{}", random_token(6));
        let claims = Claims {
            sub: id,
            name: name.chars().take(64).collect(),
            rooms: vec!["*".into()],
            exp: now_ms() / 1000 + 3600,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).ok()
    }
}

#[cfg(test)]
mod tests {
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

    fn hs(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
        let key = EncodingKey::from_secret(secret).expect("a non-empty secret");
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap_or_default()
    }

    #[tokio::test]
    async fn sign_verify_round_trip_and_forgery() {
        let a = auth();
        let c = claims(now_ms() / 1000 + 60);
        let t = a.sign(&c);
        let leeway = Claims {
            exp: c.exp + 5,
            ..c.clone()
        };
        assert_eq!(a.verify(&t).await, Ok(leeway));
        let other = Auth::new(b"other".to_vec(), Duration::from_secs(30));
        assert_eq!(other.verify(&t).await, Err(AuthError::BadSignature));
        assert_eq!(a.verify("a.b").await, Err(AuthError::Malformed));
        let old = now_ms() / 1000 - 3600;
        assert_eq!(
            a.verify(&a.sign(&claims(old))).await,
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn demo_tokens_are_not_signed_with_the_secret() {
        let production = auth();
        let demo = auth().with_demo_secret(b"demo-key".to_vec());
        assert_eq!(production.demo_token("Ana"), None);
        let Some(t) = demo.demo_token("Ana") else {
            panic!("demo mode is on")
        };
        assert!(demo.verify(&t).await.is_ok());
        assert_eq!(
            production.verify(&t).await,
            Err(AuthError::BadSignature),
            "same secret, no demo"
        );
        let signed = production.sign(&claims(now_ms() / 1000 + 60));
        assert!(demo.verify(&signed).await.is_ok());
        // Demo mode without a secret: demo tokens only.
        let s = TokenSettings {
            secret: None,
            ..TokenSettings::with_secret(Vec::new())
        };
        let only_demo = Auth::from_settings(s, Duration::from_secs(30))
            .expect("no files to load")
            .with_demo_secret(b"demo-key".to_vec());
        assert!(only_demo.verify(&t).await.is_ok());
        assert_eq!(
            only_demo.verify(&signed).await,
            Err(AuthError::BadSignature)
        );
    }

    #[tokio::test]
    async fn every_hmac_size_and_the_claim_rules() {
        let a = auth();
        let exp = now_ms() / 1000 + 60;
        for alg in HMAC_ALGS {
            let t = hs(alg, b"k", &serde_json::json!({"sub": "u", "exp": exp}));
            assert!(a.verify(&t).await.is_ok(), "{alg:?}");
        }
        let no_sub = hs(Algorithm::HS256, b"k", &serde_json::json!({"exp": exp}));
        assert_eq!(a.verify(&no_sub).await, Err(AuthError::MissingClaim("sub")));
        let empty_sub = hs(
            Algorithm::HS256,
            b"k",
            &serde_json::json!({"sub": "", "exp": exp}),
        );
        assert_eq!(
            a.verify(&empty_sub).await,
            Err(AuthError::MissingClaim("sub"))
        );
        let no_exp = hs(Algorithm::HS256, b"k", &serde_json::json!({"sub": "u"}));
        assert_eq!(a.verify(&no_exp).await, Err(AuthError::MissingClaim("exp")));
        let later = hs(
            Algorithm::HS256,
            b"k",
            &serde_json::json!({"sub": "u", "exp": exp + 600, "nbf": exp + 300}),
        );
        assert_eq!(a.verify(&later).await, Err(AuthError::NotYetValid));
        // Within the leeway (5 s) both ways; the server then treats the token as valid for
        // the leeway past its `exp` (tickets, the 4009 close).
        let skewed = hs(
            Algorithm::HS256,
            b"k",
            &serde_json::json!({"sub": "u", "exp": exp - 62, "nbf": exp - 58}),
        );
        let c = a.verify(&skewed).await.expect("within the leeway");
        assert_eq!(c.exp, exp - 62 + 5);
        assert!(!c.expired());
    }

    #[tokio::test]
    async fn rooms_claim_and_rooms_for_everyone() {
        let mut s = TokenSettings::with_secret(b"k".to_vec());
        s.rooms_claim = String::from("scope");
        s.default_rooms = vec![String::from("lobby"), String::from("news:*")];
        let a = Auth::from_settings(s, Duration::from_secs(30)).expect("no files to load");
        let exp = now_ms() / 1000 + 60;
        let t = hs(
            Algorithm::HS256,
            b"k",
            &serde_json::json!({"sub": "u", "exp": exp, "scope": "chat:a  lobby", "rooms": ["x"]}),
        );
        let c = a.verify(&t).await.expect("valid");
        assert_eq!(c.rooms, ["chat:a", "lobby", "news:*"]);
        let bare = hs(
            Algorithm::HS256,
            b"k",
            &serde_json::json!({"sub": "u", "exp": exp}),
        );
        assert_eq!(
            a.verify(&bare).await.expect("valid").rooms,
            ["lobby", "news:*"]
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_when_configured() {
        let mut s = TokenSettings::with_secret(b"k".to_vec());
        s.issuers = vec![String::from("https://idp.example")];
        s.audiences = vec![String::from("rtlink")];
        let a = Auth::from_settings(s, Duration::from_secs(30)).expect("no files to load");
        let exp = now_ms() / 1000 + 60;
        let token = |claims: Value| hs(Algorithm::HS256, b"k", &claims);
        let ok = token(
            serde_json::json!({"sub": "u", "exp": exp, "iss": "https://idp.example", "aud": ["x", "rtlink"]}),
        );
        assert!(a.verify(&ok).await.is_ok());
        let wrong_aud = token(
            serde_json::json!({"sub": "u", "exp": exp, "iss": "https://idp.example", "aud": "other"}),
        );
        assert_eq!(a.verify(&wrong_aud).await, Err(AuthError::WrongAudience));
        let no_aud =
            token(serde_json::json!({"sub": "u", "exp": exp, "iss": "https://idp.example"}));
        assert_eq!(a.verify(&no_aud).await, Err(AuthError::MissingClaim("aud")));
        let wrong_iss = token(
            serde_json::json!({"sub": "u", "exp": exp, "iss": "https://evil.example", "aud": "rtlink"}),
        );
        assert_eq!(a.verify(&wrong_iss).await, Err(AuthError::WrongIssuer));
        let no_iss = token(serde_json::json!({"sub": "u", "exp": exp, "aud": "rtlink"}));
        assert_eq!(a.verify(&no_iss).await, Err(AuthError::MissingClaim("iss")));
    }

    #[tokio::test]
    async fn no_secret_means_no_hmac_tokens() {
        let s = TokenSettings {
            secret: None,
            ..TokenSettings::with_secret(Vec::new())
        };
        let a = Auth::from_settings(s, Duration::from_secs(30)).expect("no files to load");
        let exp = now_ms() / 1000 + 60;
        let t = hs(
            Algorithm::HS256,
            b"k",
            &serde_json::json!({"sub": "u", "exp": exp}),
        );
        assert_eq!(a.verify(&t).await, Err(AuthError::Algorithm));
        assert_eq!(a.sign(&claims(exp)), "", "cannot sign without a secret");
    }
}
