//! The accept loop, shared by plain HTTP and TLS: hyper-util's server with a timer, so a
//! client cannot hold a connection open by sending nothing.
//!
//! - **TCP connections** are capped in total and per peer address (trusted proxies exempt:
//!   they carry many clients). Past a cap a new connection is answered `503` (plain HTTP, best
//!   effort) and closed at once.
//! - **Header timeout**: an HTTP/1 request head must arrive within `header_read_timeout`.
//! - **Idle timeout**: a connection with no request in flight (before its first request, or
//!   between keep-alive requests, or an HTTP/2 connection without streams) is closed after
//!   `idle_timeout`. A request is in flight until its response body ends, so SSE streams and
//!   held long polls keep their connection.
//! - **Requests in flight** are capped in total and per client address (behind trusted
//!   proxies, the forwarded one), `/v1/send` and polls included: past it, `503`/`429`.
//! - HTTP/2: at most `h2_max_streams` concurrent streams per connection, pings to find dead
//!   peers.
//! - A handler can cut its HTTP/1 connection with the [`ConnectionKill`] in the request's
//!   extensions (an SSE stream whose client stopped reading: hyper is stuck writing to it).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{StatusCode, Version};
use axum::response::Response;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::Config;
use crate::http;
use crate::metrics::{DropReason, Metrics};
use crate::proxy::TrustedProxies;
use crate::ws_wire::{DirectSocket, SharedTcp};

/// The connection-level limits (see the module docs).
#[derive(Clone, Debug)]
pub struct ServeLimits {
    pub max_tcp_connections: usize,
    pub max_tcp_connections_per_ip: usize,
    pub max_requests: usize,
    pub max_requests_per_ip: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub h2_max_streams: u32,
    pub proxies: TrustedProxies,
}

impl ServeLimits {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_tcp_connections: c.max_tcp_connections,
            max_tcp_connections_per_ip: c.max_tcp_connections_per_ip,
            max_requests: c.max_requests,
            max_requests_per_ip: c.max_requests_per_ip,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            h2_max_streams: c.h2_max_streams,
            proxies: TrustedProxies::new(c.trusted_proxies.clone()),
        }
    }

    /// The timeouts of [`Config::default`], no caps (in-process tests and benchmarks, whose
    /// own limits live in the application).
    pub fn timeouts_only() -> Self {
        let d = Config::default();
        Self {
            max_tcp_connections: usize::MAX,
            max_tcp_connections_per_ip: usize::MAX,
            max_requests: usize::MAX,
            max_requests_per_ip: usize::MAX,
            ..Self::from_config(&d)
        }
    }
}

/// The TCP connection's place under the TCP caps. Hyper lets go of a connection once it is
/// upgraded; the WebSocket keeps this to stay counted.
#[derive(Clone)]
pub struct TcpSlot(#[allow(dead_code)] Arc<Slot>);

/// Cuts the HTTP/1 connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnectionKill(Arc<Notify>);

impl ConnectionKill {
    pub fn kill(&self) {
        self.0.notify_one();
    }
}

/// Counts per address under a total; a [`Slot`] is one unit, released on drop. The total is
/// mirrored in a gauge of [`Metrics`].
struct Counter {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicU64,
}

/// Why a [`Counter`] refused.
enum Full {
    Total,
    PerIp,
}

impl Counter {
    fn new(
        max_total: usize,
        max_per_ip: usize,
        metrics: Arc<Metrics>,
        gauge: fn(&Metrics) -> &AtomicU64,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::new((0, HashMap::new())),
            metrics,
            gauge,
        })
    }

    /// A slot for `ip` (`None`: counted in the total only).
    fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Full> {
        let mut guard = self.counts.lock();
        let (total, per_ip) = &mut *guard;
        if *total >= self.max_total {
            return Err(Full::Total);
        }
        if let Some(ip) = ip {
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err(Full::PerIp);
            }
            *n += 1;
        }
        *total += 1;
        (self.gauge)(&self.metrics).store(*total as u64, Ordering::Relaxed);
        Ok(Slot {
            counter: self.clone(),
            ip,
        })
    }
}

struct Slot {
    counter: Arc<Counter>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.counter.counts.lock();
        let (total, per_ip) = &mut *guard;
        *total = total.saturating_sub(1);
        (self.counter.gauge)(&self.counter.metrics).store(*total as u64, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Activity of one connection, for its idle timeout.
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the last request ended.
    last_ms: AtomicU64,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// One request in flight on a connection; ends when its response body is dropped.
struct InFlight {
    activity: Arc<Activity>,
    _slot: Slot,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .last_ms
            .store(self.activity.now_ms(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection task shares.
struct Shared {
    router: Router,
    limits: ServeLimits,
    builder: auto::Builder<TokioExecutor>,
    tcp: Arc<Counter>,
    requests: Arc<Counter>,
    metrics: Arc<Metrics>,
}

/// Serves `router` on `listener` (over TLS with `tls`) with `limits` until `shutdown`
/// resolves, then waits (at most 5 s) for open connections to finish. Connection counts and
/// refusals go to `metrics`.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    metrics: Arc<Metrics>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let shared = Arc::new(Shared {
        router,
        tcp: Counter::new(
            limits.max_tcp_connections,
            limits.max_tcp_connections_per_ip,
            metrics.clone(),
            |m| &m.tcp_connections,
        ),
        requests: Counter::new(
            limits.max_requests,
            limits.max_requests_per_ip,
            metrics.clone(),
            |m| &m.requests_in_flight,
        ),
        metrics,
        limits,
        builder,
    });
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let peer = addr.ip();
                let counted = (!shared.limits.proxies.trusts(peer)).then_some(peer);
                let slot = match shared.tcp.acquire(counted) {
                    Ok(slot) => slot,
                    Err(_) => {
                        shared.metrics.count_drop(DropReason::ConnectionCap);
                        if acceptor.is_none() {
                            refuse_tcp(&tcp);
                        }
                        continue;
                    }
                };
                // Without TCP_NODELAY a small write waits for the peer's delayed ACK (tens of
                // ms) behind an unacknowledged one; the WebSocket writer batches instead.
                let _ = tcp.set_nodelay(true);
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                let slot = TcpSlot(Arc::new(slot));
                tokio::spawn(async move {
                    match acceptor {
                        None => {
                            // Shared with the WebSocket writer, which writes to it directly
                            // after an upgrade (crate::ws_wire).
                            let tcp = Arc::new(tcp);
                            let direct = Some(DirectSocket(tcp.clone()));
                            serve_connection(SharedTcp(tcp), addr, slot, direct, shared, watcher).await
                        }
                        Some(acceptor) => {
                            let handshake = acceptor.accept(tcp);
                            let limit = shared.limits.header_read_timeout;
                            if let Ok(Ok(stream)) = tokio::time::timeout(limit, handshake).await {
                                serve_connection(stream, addr, slot, None, shared, watcher).await;
                            }
                        }
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

/// Best effort: tells a plain-HTTP client why its connection is closed, without waiting.
fn refuse_tcp(tcp: &TcpStream) {
    const BODY: &str =
        r#"{"error":"overloaded","message":"too many connections","retry_after_ms":5000}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tcp.try_write(response.as_bytes());
}

async fn serve_connection<I>(
    io: I,
    addr: SocketAddr,
    slot: TcpSlot,
    direct: Option<DirectSocket>,
    shared: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        started: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
    });
    let kill = Arc::new(Notify::new());
    let service = {
        let (shared, activity, kill) = (shared.clone(), activity.clone(), kill.clone());
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let (shared, activity, kill) = (shared.clone(), activity.clone(), kill.clone());
            req.extensions_mut().insert(slot.clone());
            if let Some(direct) = &direct {
                req.extensions_mut().insert(direct.clone());
            }
            async move { Ok::<_, Infallible>(handle(req, addr, &shared, activity, kill).await) }
        })
    };
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    let idle = shared.limits.idle_timeout;
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = kill.notified() => return,
            _ = tokio::time::sleep_until(deadline) => {
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    deadline = tokio::time::Instant::now() + idle;
                    continue;
                }
                let idle_for = activity.now_ms().saturating_sub(activity.last_ms.load(Ordering::Relaxed));
                let idle_for = Duration::from_millis(idle_for);
                if idle_for >= idle {
                    return; // dropping the connection closes it
                }
                deadline = tokio::time::Instant::now() + (idle - idle_for);
            }
        }
    }
}

fn refuse_request(metrics: &Metrics, full: Full) -> Response {
    metrics.count_drop(DropReason::RequestCap);
    match full {
        Full::Total => http::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight",
            Duration::from_secs(1),
        ),
        Full::PerIp => http::overloaded(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests in flight from this address",
            Duration::from_secs(1),
        ),
    }
}

async fn handle(
    mut req: hyper::Request<Incoming>,
    addr: SocketAddr,
    shared: &Shared,
    activity: Arc<Activity>,
    kill: Arc<Notify>,
) -> Response {
    let ip = shared.limits.proxies.client_ip(addr.ip(), req.headers());
    let slot = match shared.requests.acquire(Some(ip)) {
        Ok(slot) => slot,
        Err(full) => return refuse_request(&shared.metrics, full),
    };
    activity.in_flight.fetch_add(1, Ordering::Relaxed);
    let in_flight = InFlight {
        activity,
        _slot: slot,
    };
    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
    if req.version() <= Version::HTTP_11 {
        req.extensions_mut().insert(ConnectionKill(kill));
    }
    let Ok(response) = shared.router.clone().oneshot(req).await;
    // The request is in flight until its body ends (an SSE stream, a held poll).
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _ = &in_flight;
            frame
        }))
    })
}
