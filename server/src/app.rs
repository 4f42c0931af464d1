//! The application: shared state and the router. `main.rs` only parses the command line and
//! serves [`app`]; tests serve it on port 0.

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rtlink_protocol::codec::decode_ticket_request;
use rtlink_protocol::envelope::TicketResponse;
use rtlink_protocol::paths;
use serde::Deserialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

use crate::admission::{self, AcceptBudget};
use crate::api::{self, ApiKeys};
use crate::auth::{random_token, Auth, AuthError, Grant, TicketRefusal, TokenSettings};
use crate::broker::local::{LocalBroker, LocalBrokerConfig};
use crate::broker::redis::{RedisBroker, RedisOptions};
use crate::broker::Broker;
use crate::cluster::local::SingleNode;
use crate::cluster::redis::RedisCluster;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::{self, ClientIp, OriginPolicy};
use crate::hub::Hub;
use crate::limits::ConnectionLimiter;
use crate::listener::ServeLimits;
use crate::metrics::Metrics;
use crate::proxy::TrustedProxies;
use crate::transport;

/// Shared state of the server; cheap to clone. Also the handle tests and `main` use to drain.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    /// Where sessions of other nodes are served (no sticky sessions).
    pub cluster: Arc<dyn Cluster>,
    pub auth: Auth,
    /// Keys of the server API for backends (`crate::api`).
    pub api_keys: ApiKeys,
    pub limiter: Arc<ConnectionLimiter>,
    /// The accept-rate budget of `POST /v1/ticket`.
    pub accept: AcceptBudget,
    pub metrics: Arc<Metrics>,
    pub origins: OriginPolicy,
    /// Reverse proxies whose forwarding headers name the client.
    pub proxies: TrustedProxies,
    /// Demo endpoints (`/v1/demo-token`, `/v1/demo/drain`) are on.
    pub demo: bool,
    pub(crate) draining: AtomicBool,
    local_broker: Option<Arc<LocalBroker>>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state with the broker the configuration asks for. Must run inside a Tokio
    /// runtime (it starts the hub's tasks).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        if config.redis.is_some() {
            anyhow::bail!("--redis needs AppState::from_config (it connects asynchronously)");
        }
        let broker = Arc::new(LocalBroker::new(LocalBrokerConfig {
            history_max_messages: config.history_max_messages,
            history_max_age: config.history_max_age,
            history_max_bytes: config.history_max_bytes,
            dedupe_window: config.dedupe_window,
            ..LocalBrokerConfig::default()
        }));
        let single = Arc::new(SingleNode);
        Self::build(config, broker.clone(), Some(broker), single)
    }

    /// Builds the state with the in-process broker, or connects to Redis with `--redis`.
    pub async fn from_config(config: Config) -> anyhow::Result<Self> {
        let Some(url) = config.redis.clone() else {
            return Self::new(config);
        };
        config.validate().map_err(anyhow::Error::msg)?;
        let opts = RedisOptions {
            history_max_messages: config.history_max_messages,
            history_max_age: config.history_max_age,
            history_max_bytes: config.history_max_bytes,
            dedupe_window: config.dedupe_window,
            key_prefix: config.redis_key_prefix.clone(),
            node_ttl: config.redis_node_ttl,
            room_key_ttl: config.history_max_age + crate::broker::redis::ROOM_KEY_GRACE,
            ..RedisOptions::default()
        };
        // The URL may carry a password: it is never logged.
        let broker = RedisBroker::connect(&url, opts).await?;
        tracing::info!(node = broker.node_id(), "using the Redis broker");
        let (cluster, inbox) = RedisCluster::start(broker.cluster_link()).await?;
        let state = Self::build(config, broker, None, cluster)?;
        tokio::spawn(crate::cluster::serve(Arc::downgrade(&state.0), inbox));
        Ok(state)
    }

    /// Builds the state around any broker (e.g. Redis). The configuration is not validated:
    /// without a secret, nobody can sign a token it accepts.
    pub fn with_broker(config: Config, broker: Arc<dyn Broker>) -> anyhow::Result<Self> {
        Self::build(config, broker, None, Arc::new(SingleNode))
    }

    /// The state behind a weak reference (tasks that must not keep the server alive).
    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(Self)
    }

    fn build(
        config: Config,
        broker: Arc<dyn Broker>,
        local: Option<Arc<LocalBroker>>,
        cluster: Arc<dyn Cluster>,
    ) -> anyhow::Result<Self> {
        // The shared secret, if any: without one (validated: demo mode, or an identity
        // provider's public keys) no HS* token but demo ones is accepted.
        let secret = config.auth_secret.as_ref().map(|s| s.as_bytes().to_vec());
        let demo = config.demo_auth;
        if demo {
            tracing::warn!(
                "demo mode (--demo-auth): anyone can get a token from POST /v1/demo-token. \
                 Do not run this in production."
            );
        }
        let origins = OriginPolicy::new(&config.allowed_origins, config.allow_localhost_origins);
        if origins.allows_any() {
            tracing::warn!("no --allowed-origin configured: requests from any Origin are accepted");
        }
        let mut auth = Auth::from_settings(
            TokenSettings::from_config(&config, secret.clone()),
            config.ticket_ttl,
        )?;
        if demo {
            // Nobody holds a random base: demo tokens are then the only HS* tokens accepted.
            let base = secret.unwrap_or_else(|| random_token(32).into_bytes());
            auth = auth.with_demo_secret(demo_key(&base));
        }
        let api_keys = ApiKeys::load(&config.api_keys, config.api_key_file.as_deref())?
            .with_publish_budget(
                config.api_publish_bytes_per_sec,
                config.api_publish_bytes_burst,
                api::MAX_BODY_BYTES as u32,
            );
        if !api_keys.is_empty() {
            tracing::info!(keys = api_keys.len(), "server API for backends is on");
        }
        let metrics = Arc::new(Metrics::default());
        let proxies = TrustedProxies::new(config.trusted_proxies.clone());
        let config = Arc::new(config);
        let hub = Hub::new(config.clone(), broker, metrics.clone());
        hub.start();
        let state = Self(Arc::new(Inner {
            auth,
            api_keys,
            accept: AcceptBudget::new(
                config.accept_rate,
                config.accept_burst,
                config.accept_rate_per_ip,
                config.accept_burst_per_ip,
            ),
            limiter: ConnectionLimiter::new(
                config.max_connections,
                config.max_connections_per_ip,
                metrics.clone(),
            ),
            config,
            hub,
            cluster,
            metrics,
            origins,
            proxies,
            demo,
            draining: AtomicBool::new(false),
            local_broker: local,
        }));
        let weak = Arc::downgrade(&state.0);
        crate::supervisor::supervise("sweep", state.metrics.clone(), move |_| {
            Some(sweep(weak.clone()))
        });
        Ok(state)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The key demo tokens are signed with: derived from the secret (so demo tokens survive a
/// restart, as the secret's do) but never the secret itself, so a demo token is refused by a
/// server that shares the secret without running the demo.
fn demo_key(secret: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return random_token(32).into_bytes();
    };
    mac.update(b"rtlink demo-token key v1");
    mac.finalize().into_bytes().to_vec()
}

/// Periodic housekeeping: expired tickets, idle rooms, old dedupe ids.
async fn sweep(state: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        state.accept.sweep();
        state.hub.publish_budget.sweep(std::time::Instant::now());
        state.api_keys.sweep(std::time::Instant::now());
        if let Some(b) = &state.local_broker {
            b.sweep();
        }
    }
}

/// The router: every endpoint of docs/PROTOCOL.md, CORS for the HTTP ones, and the demo's
/// static files at `/` when `--static-dir` is set.
pub fn app(state: AppState) -> Router {
    let origins = state.origins.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin.to_str().is_ok_and(|o| origins.allows(o))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));
    let mut router = Router::new()
        .route(paths::HEALTH, get(healthz))
        .route(paths::METRICS, get(metrics))
        .route(paths::TICKET, post(ticket))
        .route("/v1/demo-token", post(demo_token))
        .route("/v1/demo/drain", post(demo_drain))
        .route(paths::WEBSOCKET, get(transport::websocket::handler))
        .route(paths::SSE, get(transport::sse::handler))
        .route(
            paths::POLL,
            get(transport::long_poll::handler).post(transport::long_poll::continue_handler),
        )
        .route(paths::SEND, post(transport::send::handler))
        .merge(api::router());
    if state.config.test_control {
        router = router.route("/v1/test/exit", post(test_exit));
    }
    if let Some(dir) = &state.config.static_dir {
        router = router.fallback_service(ServeDir::new(dir));
    }
    router.layer(cors).with_state(state)
}

/// Serves `router` on `listener` with the peer address available (for per-IP limits) until
/// `shutdown` resolves, with the connection timeouts but no connection caps (in-process tests
/// and benchmarks). `main` uses [`crate::listener::serve_with`] and the configured limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve_with(
        listener,
        router,
        ServeLimits::timeouts_only(),
        Arc::new(Metrics::default()),
        None,
        shutdown,
    )
    .await
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(
        &state.hub.broker.stats(),
        state.is_draining(),
        state.hub.coalescing.engaged(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Largest `POST /v1/ticket` body (`{"resume": R, "probe": true}`).
const MAX_TICKET_BODY: usize = 4096;

/// `POST /v1/ticket` with `Authorization: Bearer <token>`, and optionally a JSON body naming the
/// session the transport continues (`{"resume": R, "probe"?: true}`).
/// Admission is decided here ([`crate::admission`]): draining, the accept-rate budget, full.
async fn ticket(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if !state.origins.check(&headers) {
        return http::origin_refused();
    }
    if let Err(refused) = admission::before_token(&state, ip) {
        return refused;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return http::unauthorized("missing bearer token");
    };
    let claims = match state.auth.verify(token.trim()).await {
        Ok(c) => c,
        Err(AuthError::KeysUnavailable) => {
            return http::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                &AuthError::KeysUnavailable.to_string(),
                Duration::from_secs(5),
            )
        }
        Err(e) => return http::unauthorized(&e.to_string()),
    };
    if let Err(refused) = admission::after_token(&state, ip) {
        return refused;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_TICKET_BODY).await else {
        return http::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            rtlink_protocol::ErrorCode::TooLarge,
            "ticket request body too large",
            None,
        );
    };
    let request = match decode_ticket_request(&body, MAX_TICKET_BODY) {
        Ok(r) => r,
        Err(e) => return http::bad_request(&format!("ticket request: {e}")),
    };
    if request.probe && request.resume.is_none() {
        return http::bad_request("a probe ticket needs the session to probe (`resume`)");
    }
    let grant = Grant {
        claims,
        resume: request.resume,
        probe: request.probe,
    };
    match state.auth.issue_grant(&*state.hub.broker, grant).await {
        Ok((ticket, ttl)) => Json(TicketResponse {
            ticket,
            expires_in_ms: ttl.as_millis() as u64,
        })
        .into_response(),
        Err(TicketRefusal::TooManyForUser) => http::overloaded(
            StatusCode::TOO_MANY_REQUESTS,
            "too many unused tickets for this user; use them or wait for them to expire",
            state.config.ticket_ttl,
        ),
        Err(TicketRefusal::TableFull) => http::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many tickets",
            Duration::from_secs(5),
        ),
        Err(TicketRefusal::Unavailable) => http::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "tickets are unavailable right now",
            Duration::from_secs(1),
        ),
    }
}

#[derive(Deserialize)]
struct DemoTokenRequest {
    name: String,
}

/// `POST /v1/demo-token {"name"}` → `{"token"}` (demo mode only).
async fn demo_token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !state.demo {
        return http::error(
            StatusCode::NOT_FOUND,
            rtlink_protocol::ErrorCode::BadRequest,
            "demo auth is off",
            None,
        );
    }
    if !state.origins.check_demo(&headers) {
        return http::origin_refused();
    }
    let Ok(req) = serde_json::from_slice::<DemoTokenRequest>(&body) else {
        return http::bad_request("body must be {\"name\": \"...\"}");
    };
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return http::bad_request("name must be 1-64 characters");
    }
    match state.auth.demo_token(name) {
        Some(token) => Json(serde_json::json!({ "token": token })).into_response(),
        None => http::error(
            StatusCode::NOT_FOUND,
            rtlink_protocol::ErrorCode::BadRequest,
            "demo auth is off",
            None,
        ),
    }
}

/// `POST /v1/demo/drain`: the demo's "drain server" button. Drains like SIGTERM, then accepts
/// connections again instead of exiting.
async fn demo_drain(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.demo {
        return http::error(
            StatusCode::NOT_FOUND,
            rtlink_protocol::ErrorCode::BadRequest,
            "demo mode is off",
            None,
        );
    }
    // A cross-site form POST needs no preflight: only this server's own pages may drain it.
    if !state.origins.check_demo(&headers) {
        return http::origin_refused();
    }
    let s = state.clone();
    tokio::spawn(async move { s.drain_then_resume().await });
    StatusCode::ACCEPTED.into_response()
}

/// `POST /v1/test/exit` (only with `--test-control`): exits at once with code 75, without a
/// drain, so browser tests can crash the server mid-stream (scripts/with-servers restarts it).
async fn test_exit() -> Response {
    tracing::warn!("test control: exiting now (code 75)");
    std::process::exit(75)
}
