//! Command line and environment configuration. Every flag has an `RTLINK_*` environment variable.
//!
//! Durations take a unit: `250ms`, `10s`, `2m`, `1h` (a bare number is seconds).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use crate::api::ApiKey;

/// A transport, as named on the command line and in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum)]
pub enum TransportKind {
    #[value(name = "websocket")]
    WebSocket,
    #[value(name = "sse")]
    Sse,
    #[value(name = "poll")]
    Poll,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::Poll => "poll",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds.
/// A percentage, `25` or `25%`, as a fraction (0.25); 0 to 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?}: a percentage from 0 to 100"));
    }
    Ok(v / 100.0)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 250ms, 10s, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("unknown unit in `{s}` (use ms, s, m or h)")),
    }
}

/// rtlink reference server: WebSocket, SSE and long-polling transports for the rtlink SDK.
#[derive(Clone, Debug, Parser)]
#[command(name = "rtlink-server", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RTLINK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HS256 secret that signs tokens, at least 32 bytes. Required, unless `--demo-auth` runs
    /// the demo with a random one.
    #[arg(long, env = "RTLINK_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Enable `POST /v1/demo-token` (a token for any name) and `POST /v1/demo/drain`. Demo
    /// tokens are signed with a key of their own, which only a server in demo mode accepts.
    #[arg(long, env = "RTLINK_DEMO_AUTH")]
    pub demo_auth: bool,

    /// PEM public key (RSA, EC P-256/P-384 or Ed25519) that verifies RS*/PS*, ES256/ES384 or
    /// EdDSA tokens; repeatable.
    #[arg(
        long = "auth-public-key",
        env = "RTLINK_AUTH_PUBLIC_KEY",
        value_delimiter = ','
    )]
    pub auth_public_keys: Vec<PathBuf>,

    /// JWKS of an identity provider: a file or an http(s) URL. Keys are selected by the token's
    /// `kid` and reloaded every `--auth-jwks-refresh` (and when an unknown `kid` shows up).
    #[arg(long, env = "RTLINK_AUTH_JWKS")]
    pub auth_jwks: Option<String>,

    /// How often the JWKS is reloaded.
    #[arg(long, env = "RTLINK_AUTH_JWKS_REFRESH", default_value = "10m", value_parser = parse_duration)]
    pub auth_jwks_refresh: Duration,

    /// Accepted token issuer (`iss`); repeatable. Without one, `iss` is not checked.
    #[arg(
        long = "auth-issuer",
        env = "RTLINK_AUTH_ISSUER",
        value_delimiter = ','
    )]
    pub auth_issuers: Vec<String>,

    /// Accepted token audience (`aud`); repeatable. Without one, `aud` is not checked.
    #[arg(
        long = "auth-audience",
        env = "RTLINK_AUTH_AUDIENCE",
        value_delimiter = ','
    )]
    pub auth_audiences: Vec<String>,

    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[arg(long, env = "RTLINK_AUTH_LEEWAY", default_value = "5s", value_parser = parse_duration)]
    pub auth_leeway: Duration,

    /// The token claim that holds the room patterns (an array, or a space-separated string).
    #[arg(long, env = "RTLINK_AUTH_ROOMS_CLAIM", default_value = "rooms")]
    pub auth_rooms_claim: String,

    /// Room pattern every authenticated user may subscribe to, whatever the token says;
    /// repeatable.
    #[arg(
        long = "auth-default-room",
        env = "RTLINK_AUTH_DEFAULT_ROOM",
        value_delimiter = ','
    )]
    pub auth_default_rooms: Vec<String>,

    /// API key of the server API for backends (`POST /v1/publish`, ...); repeatable. Never
    /// logged. Without any key the server API answers 401.
    #[arg(
        long = "api-key",
        env = "RTLINK_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,

    /// File with API keys, one per line (blank lines and `#` comments are ignored).
    #[arg(long, env = "RTLINK_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Publish budget of one API key on this node: payload bytes per second of
    /// `POST /v1/publish`. Beyond it (and its burst) the request is refused `429 rate_limited`
    /// with a `Retry-After`, and nothing of it is stored.
    #[arg(long, env = "RTLINK_API_PUBLISH_BYTES_PER_SEC", default_value_t = 1024 * 1024)]
    pub api_publish_bytes_per_sec: u32,

    /// Burst of the API key's publish budget, in payload bytes (at least the largest request
    /// body, 8 MiB, so any valid request can pass once the budget refilled).
    #[arg(long, env = "RTLINK_API_PUBLISH_BYTES_BURST", default_value_t = 8 * 1024 * 1024)]
    pub api_publish_bytes_burst: u32,

    /// Allowed `Origin` (repeatable or comma separated). With none, any origin is allowed.
    #[arg(
        long = "allowed-origin",
        env = "RTLINK_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Reverse proxy (address or network, e.g. `10.0.0.0/8`; repeatable or comma separated)
    /// whose `Forwarded` / `X-Forwarded-For` names the client for the per-address limits.
    #[arg(
        long = "trusted-proxy",
        env = "RTLINK_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::proxy::IpNet>,

    /// Also allow any `http://localhost:<port>` and `http://127.0.0.1:<port>` origin.
    #[arg(long, env = "RTLINK_ALLOW_LOCALHOST_ORIGINS")]
    pub allow_localhost_origins: bool,

    /// Serve the files in this directory at `/` (the demo app).
    #[arg(long, env = "RTLINK_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Switch a transport off (testing the client's fallback); repeatable.
    #[arg(
        long = "disable-transport",
        env = "RTLINK_DISABLE_TRANSPORT",
        value_delimiter = ','
    )]
    pub disabled_transports: Vec<TransportKind>,

    /// Redis URL for the scale-out broker (e.g. redis://127.0.0.1:6379). Without it, an
    /// in-process broker serves one node.
    #[arg(long, env = "RTLINK_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// Prefix of every Redis key and channel; the nodes of one cluster share it.
    #[arg(long, env = "RTLINK_REDIS_KEY_PREFIX", default_value = "rtlink")]
    pub redis_key_prefix: String,

    /// Lifetime of a node's liveness key in Redis: the sessions and presence of a node that
    /// stops refreshing it (crashed) are gone after about this long.
    #[arg(long, env = "RTLINK_REDIS_NODE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub redis_node_ttl: Duration,

    /// Testing only: enable `POST /v1/test/exit`, which exits the process at once with code 75
    /// (a simulated crash). Never enable in production.
    #[arg(long, env = "RTLINK_TEST_CONTROL")]
    pub test_control: bool,

    /// Log format.
    #[arg(long, env = "RTLINK_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// TLS certificate chain (PEM); with `--tls-key` the server speaks HTTPS (h2 + http/1.1).
    #[arg(long, env = "RTLINK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "RTLINK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How often the server pings every transport.
    #[arg(long, env = "RTLINK_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Extra silence tolerated after a ping interval before a WebSocket is closed 4005.
    #[arg(long, env = "RTLINK_HEARTBEAT_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_grace: Duration,

    /// SSE keep-alive comment interval.
    #[arg(long, env = "RTLINK_SSE_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub sse_keepalive: Duration,

    /// Write coalescing: a WebSocket or SSE connection that wrote less than this long ago holds
    /// new frames until this long after that write, then writes them all at once; one idle for
    /// this long writes at once. Fewer system calls per delivery on busy connections, at most
    /// this much more latency (0ms: write as soon as possible). Only while the server is busy:
    /// see `--write-window-above-cpu`.
    #[arg(long, env = "RTLINK_WRITE_WINDOW", default_value = "5ms", value_parser = parse_duration)]
    pub write_window: Duration,

    /// Write windows hold frames only while the server's CPU use, sampled every 100 ms, is at
    /// least this percentage of the cores it may use (released below a quarter of it): an
    /// idle server writes every frame at once. 0: windows always hold.
    #[arg(long, env = "RTLINK_WRITE_WINDOW_ABOVE_CPU", default_value = "25", value_parser = parse_percent)]
    pub write_window_above_cpu: f64,

    /// Longest a long-poll request is held open.
    #[arg(long, env = "RTLINK_POLL_HOLD", default_value = "25s", value_parser = parse_duration)]
    pub poll_hold: Duration,

    /// How long a session without transport stays resumable.
    #[arg(long, env = "RTLINK_RESUME_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub resume_window: Duration,

    /// How long a dropped connection stays present before `presence_leave` goes out.
    #[arg(long, env = "RTLINK_PRESENCE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub presence_grace: Duration,

    /// Presence changes of a large room are sent as one `presence_diff` per this interval
    /// instead of one frame per change (0ms: never coalesce).
    #[arg(long, env = "RTLINK_PRESENCE_BATCH", default_value = "50ms", value_parser = parse_duration)]
    pub presence_batch: Duration,

    /// Local subscribers from which a room's presence changes are coalesced.
    #[arg(long, env = "RTLINK_PRESENCE_BATCH_MIN_MEMBERS", default_value_t = 64)]
    pub presence_batch_min_members: usize,

    /// Rooms without presence (repeatable or comma separated; `*` matches any run of
    /// characters): no join/update/leave events, an empty snapshot, `presence` is refused.
    /// For rooms too large to list their members (an audience).
    #[arg(
        long = "presence-off",
        env = "RTLINK_PRESENCE_OFF",
        value_delimiter = ','
    )]
    pub presence_off: Vec<String>,

    /// A typing start with no stop is ended by the server after this long.
    #[arg(long, env = "RTLINK_TYPING_TTL", default_value = "8s", value_parser = parse_duration)]
    pub typing_ttl: Duration,

    /// Lifetime of a ticket from `POST /v1/ticket`.
    #[arg(long, env = "RTLINK_TICKET_TTL", default_value = "30s", value_parser = parse_duration)]
    pub ticket_ttl: Duration,

    /// Reconnect window announced on drain (`reconnect_after.max_ms`).
    #[arg(long, env = "RTLINK_DRAIN_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub drain_window: Duration,

    /// How long a drain waits for transports to close before giving up on them.
    #[arg(long, env = "RTLINK_DRAIN_GRACE", default_value = "2s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Largest frame (and `/v1/send` body) accepted, in bytes.
    #[arg(long, env = "RTLINK_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: usize,

    /// Sustained publish/presence/typing frames per second per connection.
    #[arg(long, env = "RTLINK_RATE_PER_SEC", default_value_t = 20)]
    pub rate_per_sec: u32,

    /// Token-bucket burst.
    #[arg(long, env = "RTLINK_RATE_BURST", default_value_t = 40)]
    pub rate_burst: u32,

    /// Rate-limit nacks tolerated (within 10 s) before closing 4003.
    #[arg(long, env = "RTLINK_RATE_STRIKES", default_value_t = 10)]
    pub rate_strikes: u32,

    /// Rooms one session may be subscribed to.
    #[arg(long, env = "RTLINK_MAX_ROOMS", default_value_t = 100)]
    pub max_rooms: u32,

    /// Room subscriptions one user may hold on this node, over all their sessions.
    #[arg(long, env = "RTLINK_MAX_ROOMS_PER_USER", default_value_t = 256)]
    pub max_rooms_per_user: usize,

    /// Subscribers one room may have on this node; more get `nack overloaded`.
    #[arg(long, env = "RTLINK_MAX_ROOM_MEMBERS", default_value_t = 10_000)]
    pub max_room_members: usize,

    /// Largest presence metadata (`presence.meta`) accepted, in bytes.
    #[arg(long, env = "RTLINK_MAX_PRESENCE_META_BYTES", default_value_t = 1024)]
    pub max_presence_meta_bytes: usize,

    /// Open transports in total; more get 503.
    #[arg(long, env = "RTLINK_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Open transports from one IP address; more get 429.
    #[arg(long, env = "RTLINK_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Accept-rate budget: connection attempts (`POST /v1/ticket`) per second, in total;
    /// beyond it and its burst, 503 with a spread `Retry-After`.
    #[arg(long, env = "RTLINK_ACCEPT_RATE", default_value_t = 1000)]
    pub accept_rate: u32,

    /// Burst of the total accept-rate budget.
    #[arg(long, env = "RTLINK_ACCEPT_BURST", default_value_t = 2000)]
    pub accept_burst: u32,

    /// Accept-rate budget per client address (IPv6: per /64), per second; beyond it and its
    /// burst, 429 with a spread `Retry-After`.
    #[arg(long, env = "RTLINK_ACCEPT_RATE_PER_IP", default_value_t = 50)]
    pub accept_rate_per_ip: u32,

    /// Burst of the per-address accept-rate budget.
    #[arg(long, env = "RTLINK_ACCEPT_BURST_PER_IP", default_value_t = 100)]
    pub accept_burst_per_ip: u32,

    /// Open TCP connections in total; more are answered 503 and closed at once.
    #[arg(long, env = "RTLINK_MAX_TCP_CONNECTIONS", default_value_t = 12_000)]
    pub max_tcp_connections: usize,

    /// Open TCP connections from one peer address (trusted proxies exempt).
    #[arg(long, env = "RTLINK_MAX_TCP_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_tcp_connections_per_ip: usize,

    /// HTTP requests in flight in total (a request is in flight until its response body ends:
    /// SSE streams and held polls count); more get 503.
    #[arg(long, env = "RTLINK_MAX_REQUESTS", default_value_t = 20_000)]
    pub max_requests: usize,

    /// HTTP requests in flight from one client address (`/v1/send`, polls and SSE streams
    /// included); more get 429.
    #[arg(long, env = "RTLINK_MAX_REQUESTS_PER_IP", default_value_t = 512)]
    pub max_requests_per_ip: usize,

    /// Longest an HTTP/1 client may take to send a request head.
    #[arg(long, env = "RTLINK_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection with no request in flight (also before its first one) is closed after this.
    #[arg(long, env = "RTLINK_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, env = "RTLINK_H2_MAX_STREAMS", default_value_t = 100)]
    pub h2_max_streams: u32,

    /// Sessions (connected or resumable) in total; more get 503.
    #[arg(long, env = "RTLINK_MAX_SESSIONS", default_value_t = 50_000)]
    pub max_sessions: usize,

    /// Sessions (connected or resumable) of one user on this node. At the cap, a new one ends
    /// the user's oldest detached session; with none detached, it is refused (429).
    #[arg(long, env = "RTLINK_MAX_SESSIONS_PER_USER", default_value_t = 32)]
    pub max_sessions_per_user: usize,

    /// Sessions (connected or resumable) opened from one IP address; more get 429.
    #[arg(long, env = "RTLINK_MAX_SESSIONS_PER_IP", default_value_t = 512)]
    pub max_sessions_per_ip: usize,

    /// Frames queued per session before it is closed 4004 slow_consumer.
    #[arg(long, env = "RTLINK_OUTBOX_FRAMES", default_value_t = 1024)]
    pub outbox_max_frames: usize,

    /// Bytes queued per session before it is closed 4004 slow_consumer.
    #[arg(long, env = "RTLINK_OUTBOX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub outbox_max_bytes: usize,

    /// Messages kept per room for resume.
    #[arg(long, env = "RTLINK_HISTORY_MESSAGES", default_value_t = 1000)]
    pub history_max_messages: usize,

    /// Bytes of history kept across all rooms (with `--redis`: across all rooms of the cluster,
    /// counted in Redis); beyond it the oldest message of any room is evicted first. A resume
    /// from an evicted offset gets `subscribed{recovered: false}`.
    #[arg(long, env = "RTLINK_HISTORY_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// Publish budget of one user on this node, over all their sessions: payload bytes per
    /// second. Beyond it (and its burst) a publish is nacked `rate_limited`.
    #[arg(long, env = "RTLINK_PUBLISH_BYTES_PER_SEC", default_value_t = 128 * 1024)]
    pub publish_bytes_per_sec: u32,

    /// Burst of the per-user publish budget, in payload bytes (at least `--max-frame-bytes`).
    #[arg(long, env = "RTLINK_PUBLISH_BYTES_BURST", default_value_t = 2 * 1024 * 1024)]
    pub publish_bytes_burst: u32,

    /// Age after which history is trimmed.
    #[arg(long, env = "RTLINK_HISTORY_AGE", default_value = "10m", value_parser = parse_duration)]
    pub history_max_age: Duration,

    /// How long publish ids are remembered for deduplication.
    #[arg(long, env = "RTLINK_DEDUPE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub dedupe_window: Duration,
}

impl Default for Config {
    /// The defaults of every flag (environment variables included, as on the command line).
    fn default() -> Self {
        Self::parse_from(["rtlink-server"])
    }
}

/// The shortest `--auth-secret` accepted: HS256 keys shorter than the hash (32 bytes) are
/// guessable offline from one token.
pub const MIN_SECRET_BYTES: usize = 32;

/// The secret of [`Config::for_tests`]; test processes started with `--auth-secret` use it too.
pub const TEST_SECRET: &str = "rtlink-test-secret-0123456789abcdef";

impl Config {
    /// Refuses settings that would be unsafe: no secret outside demo mode, a short secret.
    /// The message says what to do.
    pub fn validate(&self) -> Result<(), String> {
        let public_keys = !self.auth_public_keys.is_empty() || self.auth_jwks.is_some();
        match &self.auth_secret {
            None if self.demo_auth || public_keys => Ok(()),
            None => Err(String::from(
                "refusing to start without --auth-secret (RTLINK_AUTH_SECRET): tokens could not \
                 be verified. Pass a secret of at least 32 bytes, an identity provider's keys \
                 (--auth-jwks, --auth-public-key), or --demo-auth to run the demo \
                 (anyone may then get a token from POST /v1/demo-token; never in production).",
            )),
            Some(s) if s.len() < MIN_SECRET_BYTES => Err(format!(
                "--auth-secret is {} bytes; it must have at least {MIN_SECRET_BYTES} \
                 (e.g. `openssl rand -base64 48`)",
                s.len()
            )),
            Some(_) => Ok(()),
        }
    }

    /// Whether rooms named `room` keep presence (not matched by `--presence-off`).
    pub fn presence_on(&self, room: &str) -> bool {
        !self
            .presence_off
            .iter()
            .any(|p| crate::auth::pattern_matches(p, room))
    }

    pub fn is_disabled(&self, kind: TransportKind) -> bool {
        self.disabled_transports.contains(&kind)
    }

    /// Defaults that make a test fast and independent of the environment.
    pub fn for_tests() -> Self {
        // Explicit values, so `RTLINK_*` variables in the environment do not leak into tests.
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth_secret: Some(TEST_SECRET.into()),
            demo_auth: true,
            auth_public_keys: Vec::new(),
            auth_jwks: None,
            auth_jwks_refresh: Duration::from_secs(600),
            auth_issuers: Vec::new(),
            auth_audiences: Vec::new(),
            auth_leeway: Duration::from_secs(5),
            auth_rooms_claim: String::from("rooms"),
            auth_default_rooms: Vec::new(),
            api_keys: Vec::new(),
            api_key_file: None,
            api_publish_bytes_per_sec: 1024 * 1024,
            api_publish_bytes_burst: 8 * 1024 * 1024,
            allowed_origins: Vec::new(),
            allow_localhost_origins: false,
            trusted_proxies: Vec::new(),
            static_dir: None,
            disabled_transports: Vec::new(),
            redis: None,
            redis_key_prefix: String::from("rtlink"),
            redis_node_ttl: Duration::from_secs(10),
            test_control: false,
            tls_cert: None,
            tls_key: None,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("25"), Ok(0.25));
        assert_eq!(parse_percent("50%"), Ok(0.5));
        assert_eq!(parse_percent("0"), Ok(0.0));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("a lot").is_err());
        let c = Config::parse_from(["rtlink-server"]);
        assert_eq!(c.write_window_above_cpu, 0.25);
    }

    #[test]
    fn flags_parse() {
        let c = Config::parse_from([
            "rtlink-server",
            "--allowed-origin",
            "http://a,http://b",
            "--disable-transport",
            "websocket",
            "--drain-window",
            "3s",
        ]);
        assert_eq!(c.allowed_origins, vec!["http://a", "http://b"]);
        assert!(c.is_disabled(TransportKind::WebSocket));
        assert_eq!(c.drain_window, Duration::from_secs(3));
    }

    #[test]
    fn unsafe_auth_settings_are_refused() {
        let base = Config::for_tests();
        assert!(base.validate().is_ok());
        let no_secret = Config {
            auth_secret: None,
            demo_auth: false,
            ..base.clone()
        };
        assert!(no_secret
            .validate()
            .is_err_and(|m| m.contains("--demo-auth")));
        let demo = Config {
            auth_secret: None,
            demo_auth: true,
            ..base.clone()
        };
        assert!(demo.validate().is_ok());
        let idp = Config {
            auth_secret: None,
            demo_auth: false,
            auth_jwks: Some(String::from("https://idp.example/jwks.json")),
            ..base.clone()
        };
        assert!(idp.validate().is_ok());
        let short = Config {
            auth_secret: Some("x".repeat(31)),
            ..base
        };
        assert!(short.validate().is_err_and(|m| m.contains("31 bytes")));
    }
}
