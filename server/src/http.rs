//! HTTP plumbing shared by the endpoints: JSON error responses, the Origin policy, the client
//! address, and the admission checks every transport runs before it opens (or upgrades).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use rtlink_protocol::envelope::HttpError;
use rtlink_protocol::{ErrorCode, PROTOCOL_VERSION};

use crate::app::AppState;
use crate::auth::{Claims, RedeemError};
use crate::config::TransportKind;
use crate::hub::SessionRefusal;
use crate::limits::{ConnGuard, Refusal};
use crate::metrics::DropReason;

/// An HTTP error with the protocol's JSON body (`{"error","message","retry_after_ms"?}`).
pub fn error(
    status: StatusCode,
    code: ErrorCode,
    message: &str,
    retry_after: Option<Duration>,
) -> Response {
    let body = HttpError {
        error: code,
        message: message.to_owned(),
        retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
    };
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(d) = retry_after {
        // Whole seconds, rounded up: never earlier than `retry_after_ms`.
        let secs = d.as_millis().div_ceil(1000).max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

pub fn bad_request(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        ErrorCode::BadRequest,
        message,
        None,
    )
}

pub fn unauthorized(message: &str) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        message,
        None,
    )
}

pub fn unknown_session() -> Response {
    error(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownSession,
        "no such session (expired?)",
        None,
    )
}

/// `overloaded` with a `Retry-After` spread over `[retry_after, 2·retry_after)` (see [`spread`]).
pub fn overloaded(status: StatusCode, message: &str, retry_after: Duration) -> Response {
    overloaded_exact(status, message, spread(retry_after))
}

/// `overloaded` with a delay the caller already spread.
pub fn overloaded_exact(status: StatusCode, message: &str, retry_after: Duration) -> Response {
    error(status, ErrorCode::Overloaded, message, Some(retry_after))
}

/// A server-given delay, spread: uniformly random in `[base, 2·base)`, so the clients refused
/// together do not come back together.
pub fn spread(base: Duration) -> Duration {
    base.mul_f64(1.0 + rand::random::<f64>())
}

/// The client's address as an extractor (see [`client_ip`]).
pub struct ClientIp(pub Option<IpAddr>);

impl axum::extract::FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        Ok(Self(
            peer.map(|p| state.proxies.client_ip(p, &parts.headers)),
        ))
    }
}

/// The answer to a transport open for which no session could be opened (the WebSocket closes
/// 1013 instead, after its `hello`).
pub fn session_refused(refusal: &SessionRefusal) -> Response {
    let (status, message) = match refusal {
        SessionRefusal::Total => (StatusCode::SERVICE_UNAVAILABLE, "too many sessions"),
        SessionRefusal::PerIp => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many sessions from this address",
        ),
        SessionRefusal::PerUser => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connected sessions for this user",
        ),
    };
    overloaded(status, message, Duration::from_secs(5))
}

/// Which browser origins may talk to this server.
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    allowed: Vec<String>,
    localhost: bool,
}

impl OriginPolicy {
    pub fn new(allowed: &[String], localhost: bool) -> Self {
        let allowed = allowed
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .collect();
        Self { allowed, localhost }
    }

    /// True when no list is configured: any origin is allowed (warned about at start-up).
    pub fn allows_any(&self) -> bool {
        self.allowed.is_empty() && !self.localhost
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.allows_any()
            || self.allowed.iter().any(|o| o == origin)
            || (self.localhost && is_localhost_origin(origin))
    }

    /// A request without `Origin` is not from a browser page and is allowed.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::ORIGIN) {
            None => true,
            Some(v) => v.to_str().is_ok_and(|o| self.allows(o)),
        }
    }

    /// The check of the demo endpoints, which change state or mint tokens with nothing but a
    /// simple POST: a browser page may call them only from this server's own origin (its
    /// `Host`), an origin listed with `--allowed-origin`, or a localhost origin with
    /// `--allow-localhost-origins`. An empty allowlist does not mean "any" here. Browsers send
    /// `Origin` on every POST; a request without one is not from a page and is allowed.
    pub fn check_demo(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let same_origin = origin
            .split_once("://")
            .is_some_and(|(_, authority)| Some(authority) == host);
        same_origin
            || self.allowed.iter().any(|o| o == origin)
            || (self.localhost && is_localhost_origin(origin))
    }
}

/// `http://localhost[:port]`, `http://127.0.0.1[:port]` or `http://[::1][:port]`.
pub fn is_localhost_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("http://") else {
        return false;
    };
    let port = ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .find_map(|host| rest.strip_prefix(host));
    match port {
        Some("") => true,
        Some(p) => p.strip_prefix(':').is_some_and(|n| {
            !n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit())
        }),
        None => false,
    }
}

/// The client's IP: the TCP peer's, or behind a trusted proxy the one it forwarded
/// ([`crate::proxy`]). `None` when the server was started without connect info.
pub fn client_ip<B>(state: &AppState, req: &Request<B>) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(state.proxies.client_ip(peer, req.headers()))
}

pub fn origin_refused() -> Response {
    error(
        StatusCode::FORBIDDEN,
        ErrorCode::OriginNotAllowed,
        "origin not allowed",
        None,
    )
}

/// Everything a transport needs once admitted.
pub struct Admission {
    pub claims: Claims,
    pub guard: ConnGuard,
    /// The session the ticket names (its `resume` token), if any.
    pub resume: Option<String>,
    /// The ticket asked for a probe of that session (see `Session::probe`).
    pub probe: bool,
}

/// A transport open that passed every check but the ticket, holding its connection slot.
/// The ticket is redeemed last ([`Prechecked::redeem`]), once nothing else can refuse the
/// open: a request refused for any other reason leaves its ticket usable.
pub struct Prechecked {
    guard: ConnGuard,
}

/// The checks before a transport opens, in order: transport enabled (404), Origin (403), not
/// draining (503), connection limits (503/429). The ticket (401) comes after the caller's own
/// checks (protocol version, upgrade headers), with [`Prechecked::redeem`].
#[allow(clippy::result_large_err)]
pub fn precheck(
    state: &AppState,
    kind: TransportKind,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
) -> Result<Prechecked, Response> {
    check_enabled(state, kind)?;
    if !state.origins.check(headers) {
        state.metrics.count_drop(DropReason::OriginNotAllowed);
        return Err(origin_refused());
    }
    if state.is_draining() {
        return Err(draining(state));
    }
    let guard = state.limiter.acquire(ip, kind).map_err(|refusal| {
        state.metrics.count_drop(DropReason::Overloaded);
        connections_refused(&refusal)
    })?;
    Ok(Prechecked { guard })
}

/// `503` while draining, with a delay spread over the drain window (the window attached
/// clients are told to reconnect in).
pub fn draining(state: &AppState) -> Response {
    let window = state.config.drain_window.max(Duration::from_secs(2));
    let delay = Duration::from_secs(1) + (window - Duration::from_secs(1)).mul_f64(rand::random());
    overloaded_exact(StatusCode::SERVICE_UNAVAILABLE, "server is draining", delay)
}

/// `503` (in total) or `429` (from this address) for the connection limits.
pub fn connections_refused(refusal: &Refusal) -> Response {
    match refusal {
        Refusal::Total => overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
            Duration::from_secs(5),
        ),
        Refusal::PerIp => overloaded(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address",
            Duration::from_secs(5),
        ),
    }
}

impl Prechecked {
    /// Consumes the ticket (401 if it is missing, unknown, expired or used).
    #[allow(clippy::result_large_err)]
    pub async fn redeem(
        self,
        state: &AppState,
        ticket: Option<&str>,
    ) -> Result<Admission, Response> {
        let redeemed = match ticket {
            Some(t) => state.auth.redeem(&*state.hub.broker, t).await,
            None => Err(RedeemError::Invalid),
        };
        let grant = match redeemed {
            Ok(grant) => grant,
            Err(RedeemError::Invalid) => {
                state.metrics.count_drop(DropReason::Unauthorized);
                return Err(unauthorized("missing, invalid, expired or reused ticket"));
            }
            Err(RedeemError::Unavailable) => {
                return Err(overloaded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tickets cannot be checked right now",
                    Duration::from_secs(1),
                ))
            }
        };
        Ok(Admission {
            claims: grant.claims,
            guard: self.guard,
            resume: grant.resume,
            probe: grant.probe,
        })
    }
}

#[allow(clippy::result_large_err)]
pub fn check_enabled(state: &AppState, kind: TransportKind) -> Result<(), Response> {
    if state.config.is_disabled(kind) {
        return Err(error(
            StatusCode::NOT_FOUND,
            ErrorCode::TransportDisabled,
            &format!("the {} transport is disabled on this server", kind.as_str()),
            None,
        ));
    }
    Ok(())
}

/// Admission for the HTTP transport opens (SSE, long polling), whose hello travels in the query:
/// [`precheck`], then a resume token in the URL (the old `?resume=`, `?session=`) is refused with
/// 400 (a secret in a URL ends up in logs; the ticket request names the session instead), then
/// the protocol version `?v=` (absent means the current one): another version is answered with
/// `old_version()`, the transport's own `close 4002` (a browser's EventSource cannot read a
/// status), with the ticket left unused; then the ticket `?ticket=`.
#[allow(clippy::result_large_err)]
pub async fn admit_query(
    state: &AppState,
    kind: TransportKind,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
    query: &HashMap<String, String>,
    old_version: impl FnOnce() -> Response,
) -> Result<Admission, Response> {
    let prechecked = precheck(state, kind, headers, ip)?;
    if query.contains_key("resume") || query.contains_key("session") {
        return Err(bad_request(
            "resume tokens never go in a URL: name the session in the POST /v1/ticket body",
        ));
    }
    if query
        .get("v")
        .is_some_and(|v| v != &PROTOCOL_VERSION.to_string())
    {
        return Err(old_version());
    }
    prechecked
        .redeem(state, query.get("ticket").map(String::as_str))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_origins() {
        assert!(is_localhost_origin("http://localhost:8080"));
        assert!(is_localhost_origin("http://127.0.0.1:1"));
        assert!(is_localhost_origin("http://localhost"));
        assert!(!is_localhost_origin("http://localhost.evil.com"));
        assert!(!is_localhost_origin("http://localhost:80x"));
        assert!(!is_localhost_origin("https://example.com"));
    }

    #[test]
    fn policy() {
        let p = OriginPolicy::new(&["https://app.example".into()], false);
        assert!(p.allows("https://app.example"));
        assert!(!p.allows("https://evil.example"));
        assert!(OriginPolicy::new(&[], false).allows("anything"));
        let l = OriginPolicy::new(&[], true);
        assert!(l.allows("http://localhost:3000") && !l.allows("https://app.example"));
    }

    #[test]
    fn demo_endpoints_refuse_foreign_origins_even_without_an_allowlist() {
        let headers = |origin: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            h
        };
        let any = OriginPolicy::new(&[], false);
        assert!(any.check_demo(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")));
        assert!(!any.check_demo(&headers(Some("https://evil.example"), "127.0.0.1:8080")));
        assert!(!any.check_demo(&headers(Some("http://127.0.0.1:9999"), "127.0.0.1:8080")));
        assert!(
            any.check_demo(&headers(None, "127.0.0.1:8080")),
            "not a browser"
        );
        let listed = OriginPolicy::new(&["https://app.example".into()], false);
        assert!(listed.check_demo(&headers(Some("https://app.example"), "api.example")));
        let local = OriginPolicy::new(&[], true);
        assert!(local.check_demo(&headers(Some("http://localhost:3000"), "127.0.0.1:8080")));
        assert!(!local.check_demo(&headers(Some("https://evil.example"), "127.0.0.1:8080")));
    }
}
