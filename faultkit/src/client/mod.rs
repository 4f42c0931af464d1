//! A native driver for the real client core (`rtlink::core::Client`): the same sans-IO state
//! machine the browser runs, driven by tokio with real sockets (tokio-tungstenite for WebSocket,
//! reqwest for SSE, long polling and the upstream POSTs), so scenarios exercise the real
//! backoff, heartbeat, ladder, resume and delivery logic against real servers.
//!
//! The run loop is the one the core's docs describe: drain outputs, arm one timer for
//! `poll_timeout()`, wait for a transport report, an app command or the timer. Everything the
//! app would see is recorded in [`Observed`], which a test reads or waits on.

mod transport;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant};

use parking_lot::Mutex;
use rtlink::core::{
    Client, CloseReason, Config, ErrorCode, Event, Fallback, Input, Instant, Output, SendError, SendId, State,
    TransportId, TransportKind,
};
use tokio::sync::{mpsc, oneshot, watch};

use rtlink_protocol::envelope::TicketRequest;
pub use transport::SseParser;
use transport::{AbortOnDrop, Open, Order, Report, TicketStep};

use crate::token;

/// How a test client connects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `http://host:port` of the server (or the proxy in front of it); several: the client's
    /// endpoints, preferred first (the core fails over between them).
    pub base_urls: Vec<String>,
    /// User id (also the display name).
    pub user: String,
    /// Secret the tokens are signed with.
    pub secret: String,
    pub config: Config,
    pub seed: u64,
    /// Read a refused WebSocket upgrade or EventSource as a browser must: "network error",
    /// without the status. On by default.
    pub opaque_refusals: bool,
    /// A new TCP connection for every HTTP request (no keep-alive pool), the worst case for a
    /// load balancer without stickiness.
    pub fresh_connections: bool,
    /// What the app's token provider hands out (changeable later: [`TestClient::set_token`]).
    pub token: TokenSpec,
}

/// The tokens a test client's provider signs: room patterns and lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    pub rooms: Vec<String>,
    /// Seconds from the moment the token is requested; negative: already expired.
    pub ttl_secs: i64,
}

impl Default for TokenSpec {
    fn default() -> Self {
        Self { rooms: vec![String::from("*")], ttl_secs: 3600 }
    }
}

impl ClientOptions {
    pub fn new(base_url: &str, user: &str) -> Self {
        Self {
            base_urls: vec![base_url.trim_end_matches('/').to_owned()],
            user: user.to_owned(),
            secret: token::TEST_SECRET.to_owned(),
            config: Config::default(),
            seed: rand::random(),
            opaque_refusals: true,
            fresh_connections: false,
            token: TokenSpec::default(),
        }
    }

    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Several endpoints (the browser client's `url: string[]`), preferred first.
    pub fn urls(mut self, urls: &[String]) -> Self {
        self.base_urls = urls.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
        self
    }

    pub fn fresh_connections(mut self) -> Self {
        self.fresh_connections = true;
        self
    }

    pub fn token(mut self, rooms: &[&str], ttl_secs: i64) -> Self {
        self.token = TokenSpec { rooms: rooms.iter().map(|r| (*r).to_owned()).collect(), ttl_secs };
        self
    }
}

/// A message the client delivered to the app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub offset: u64,
    pub payload: String,
    pub at: WallInstant,
}

/// Everything the app saw, as it happened.
#[derive(Clone, Debug)]
pub struct Observed {
    pub state: State,
    /// The transport of the open session, if open.
    pub open_on: Option<TransportKind>,
    /// Each time the state became `Open`: when, and on which transport.
    pub opens: Vec<(WallInstant, TransportKind)>,
    /// The endpoint (index into [`ClientOptions::base_urls`]) of each of `opens`.
    pub open_endpoints: Vec<usize>,
    /// Each time an open session lost its transport.
    pub drops: Vec<WallInstant>,
    pub fallbacks: Vec<(WallInstant, Fallback)>,
    pub subscribed: Vec<String>,
    /// Subscriptions the server refused (e.g. `forbidden` after a token without the room).
    pub subscribe_failed: Vec<(WallInstant, String, ErrorCode)>,
    /// Tokens the provider handed out.
    pub tokens: usize,
    pub messages: BTreeMap<String, Vec<Delivered>>,
    pub resyncs: BTreeMap<String, Vec<WallInstant>>,
    pub acked: HashMap<SendId, u64>,
    pub failed: HashMap<SendId, ErrorCode>,
    pub errors: Vec<CloseReason>,
    /// Each `Connecting`/`BackingOff` state entered, with when (attempt pacing, storms).
    pub attempts: Vec<(WallInstant, State)>,
}

impl Default for Observed {
    fn default() -> Self {
        Self {
            state: State::Idle,
            open_on: None,
            opens: Vec::new(),
            open_endpoints: Vec::new(),
            drops: Vec::new(),
            fallbacks: Vec::new(),
            subscribed: Vec::new(),
            subscribe_failed: Vec::new(),
            tokens: 0,
            messages: BTreeMap::new(),
            resyncs: BTreeMap::new(),
            acked: HashMap::new(),
            failed: HashMap::new(),
            errors: Vec::new(),
            attempts: Vec::new(),
        }
    }
}

impl Observed {
    pub fn is_open(&self) -> bool {
        self.open_on.is_some()
    }

    pub fn delivered(&self, room: &str) -> &[Delivered] {
        self.messages.get(room).map_or(&[], Vec::as_slice)
    }

    pub fn has_payload(&self, room: &str, payload: &str) -> bool {
        self.delivered(room).iter().any(|d| d.payload == payload)
    }

    pub fn resync_count(&self, room: &str) -> usize {
        self.resyncs.get(room).map_or(0, Vec::len)
    }

    /// When the session was last (re)opened.
    pub fn last_open(&self) -> Option<(WallInstant, TransportKind)> {
        self.opens.last().copied()
    }

    fn record(&mut self, event: Event, endpoint: usize) {
        let now = WallInstant::now();
        match event {
            Event::StateChanged { state, transport, .. } => {
                let was_open = self.open_on.is_some();
                self.open_on = match &state {
                    State::Open { transport, .. } => Some(*transport),
                    _ => None,
                };
                match &state {
                    State::Open { .. } => {
                        self.opens.push((now, transport.unwrap_or(TransportKind::WebSocket)));
                        self.open_endpoints.push(endpoint);
                    }
                    State::Connecting { .. } | State::BackingOff { .. } => self.attempts.push((now, state.clone())),
                    _ => {}
                }
                if was_open && self.open_on.is_none() {
                    self.drops.push(now);
                }
                self.state = state;
            }
            Event::Message { room, offset, payload, .. } => {
                self.messages.entry(room).or_default().push(Delivered { offset, payload, at: now });
            }
            Event::PublishAcked { send_id, offset } => {
                self.acked.insert(send_id, offset);
            }
            Event::PublishFailed { send_id, code, .. } => {
                self.failed.insert(send_id, code);
            }
            Event::Subscribed { room } => self.subscribed.push(room),
            Event::SubscribeFailed { room, code, .. } => self.subscribe_failed.push((now, room, code)),
            Event::ResyncNeeded { room } => self.resyncs.entry(room).or_default().push(now),
            Event::Fallback(f) => self.fallbacks.push((now, f)),
            Event::Error { reason } => self.errors.push(reason),
            _ => {}
        }
    }
}

enum Command {
    Input(Input),
    Publish { room: String, payload: String, reply: oneshot::Sender<Result<SendId, SendError>> },
}

struct Shared {
    observed: Mutex<Observed>,
    version: watch::Sender<u64>,
    token: Mutex<TokenSpec>,
}

/// A client core driven natively. Dropping it stops the driver and every transport (without a
/// goodbye: to the server it looks like the network went away).
pub struct TestClient {
    name: String,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    _driver: AbortOnDrop,
}

impl TestClient {
    /// Starts the driver and connects.
    pub fn connect(options: ClientOptions) -> Self {
        let shared = Arc::new(Shared {
            observed: Mutex::new(Observed::default()),
            version: watch::channel(0).0,
            token: Mutex::new(options.token.clone()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let name = options.user.clone();
        let driver = tokio::spawn(drive(options, rx, shared.clone()));
        Self { name, commands: tx, shared, _driver: AbortOnDrop(driver) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn input(&self, input: Input) {
        let _ = self.commands.send(Command::Input(input));
    }

    pub fn subscribe(&self, room: &str) {
        self.input(Input::Subscribe { room: room.to_owned(), history: 0 });
    }

    /// Queues a publish (the core's `publish`); its outcome shows in [`Observed::acked`] or
    /// [`Observed::failed`].
    pub async fn publish(&self, room: &str, payload: &str) -> Result<SendId, SendError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish { room: room.to_owned(), payload: payload.to_owned(), reply };
        if self.commands.send(cmd).is_err() {
            return Err(SendError::Closed);
        }
        rx.await.unwrap_or(Err(SendError::Closed))
    }

    /// What the token provider hands out from now on (the session keeps its token until it
    /// asks for a new one: after a `4009`/`401`, or a new session).
    pub fn set_token(&self, rooms: &[&str], ttl_secs: i64) {
        *self.shared.token.lock() = TokenSpec { rooms: rooms.iter().map(|r| (*r).to_owned()).collect(), ttl_secs };
    }

    /// Ends the session (the app's `close()`).
    pub fn close(&self) {
        self.input(Input::Close);
    }

    /// Reads what was observed so far.
    pub fn observed<R>(&self, f: impl FnOnce(&Observed) -> R) -> R {
        f(&self.shared.observed.lock())
    }

    pub fn snapshot(&self) -> Observed {
        self.shared.observed.lock().clone()
    }

    /// Waits until `cond` holds (checked after every event), at most `within`. Returns how long
    /// it took, or an error naming `what` with the last observed state.
    pub async fn wait(
        &self,
        within: Duration,
        what: &str,
        mut cond: impl FnMut(&Observed) -> bool,
    ) -> Result<Duration, String> {
        let start = WallInstant::now();
        let mut version = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if cond(&self.shared.observed.lock()) {
                return Ok(start.elapsed());
            }
            tokio::select! {
                changed = version.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let o = self.shared.observed.lock();
        Err(format!(
            "{}: not {what} within {within:?}; state {:?}, opens {:?}, fallbacks {:?}, errors {:?}",
            self.name,
            o.state,
            o.opens.iter().map(|(_, k)| k).collect::<Vec<_>>(),
            o.fallbacks.iter().map(|(_, f)| f).collect::<Vec<_>>(),
            o.errors
        ))
    }

    /// Waits until the session is open (on any transport).
    pub async fn wait_open(&self, within: Duration) -> Result<Duration, String> {
        self.wait(within, "open", Observed::is_open).await
    }
}

/// The driver's run loop.
async fn drive(options: ClientOptions, mut commands: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>) {
    let epoch = WallInstant::now();
    let now = || Instant::from_millis(u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX));
    let mut http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if options.fresh_connections {
        http = http.pool_max_idle_per_host(0);
    }
    let Ok(http) = http.build() else { return };
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<(TransportId, Report)>();
    let mut transports: HashMap<TransportId, (mpsc::UnboundedSender<Order>, AbortOnDrop)> = HashMap::new();
    let config = Config { endpoints: options.base_urls.len(), ..options.config.clone() };
    let base_url =
        |endpoint: usize| options.base_urls.get(endpoint).or(options.base_urls.first()).cloned().unwrap_or_default();
    let mut core = Client::new(config, now(), options.seed);
    core.handle_input(now(), Input::Connect);
    loop {
        let mut events = Vec::new();
        while let Some(out) = core.poll_output() {
            match out {
                Output::RequestToken => {
                    let spec = shared.token.lock().clone();
                    let rooms: Vec<&str> = spec.rooms.iter().map(String::as_str).collect();
                    let token = token::sign_for(&options.secret, &options.user, &options.user, &rooms, spec.ttl_secs);
                    shared.observed.lock().tokens += 1;
                    core.handle_input(now(), Input::TokenReady(token));
                }
                Output::FetchTicket { id, endpoint, token, resume, probe } => {
                    // Held like a transport, so CloseTransport aborts it.
                    let (tx, _rx) = mpsc::unbounded_channel();
                    let step = TicketStep {
                        id,
                        base_url: base_url(endpoint),
                        token,
                        request: TicketRequest { resume, probe },
                        http: http.clone(),
                        reports: reports_tx.clone(),
                    };
                    transports.insert(id, (tx, AbortOnDrop(tokio::spawn(transport::ticket_step(step)))));
                }
                Output::OpenTransport { id, endpoint, kind, ticket } => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let open = Open {
                        id,
                        kind,
                        base_url: base_url(endpoint),
                        ticket,
                        http: http.clone(),
                        opaque_refusals: options.opaque_refusals,
                        reports: reports_tx.clone(),
                    };
                    transports.insert(id, (tx, AbortOnDrop(tokio::spawn(transport::run(open, rx)))));
                }
                Output::Send { id, frame } => {
                    if let Some((tx, _)) = transports.get(&id) {
                        let _ = tx.send(Order::Send(frame));
                    }
                }
                Output::CloseTransport { id, code } => {
                    if let Some((tx, task)) = transports.remove(&id) {
                        let _ = tx.send(Order::Close(code));
                        // Let it say goodbye, then make sure it is gone.
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            drop(task);
                        });
                    }
                }
                Output::Event(e) => events.push(e),
            }
        }
        if !events.is_empty() {
            let mut o = shared.observed.lock();
            for e in events {
                o.record(e, core.endpoint());
            }
            drop(o);
            shared.version.send_modify(|v| *v += 1);
        }
        let deadline =
            core.poll_timeout().map(|d| tokio::time::Instant::from_std(epoch + Duration::from_millis(d.as_millis())));
        tokio::select! {
            report = reports.recv() => {
                let Some((id, report)) = report else { return };
                let input = match report {
                    Report::Ticket(ticket) => Input::TicketIssued { id, ticket },
                    Report::Opened => Input::TransportOpened { id },
                    Report::Frame(frame) => Input::Frame { id, frame },
                    Report::Closed { code, reason } => {
                        transports.remove(&id);
                        Input::TransportClosed { id, code, reason }
                    }
                    Report::OpenFailed(error) => {
                        transports.remove(&id);
                        Input::OpenFailed { id, error }
                    }
                };
                core.handle_input(now(), input);
            }
            command = commands.recv() => match command {
                None => return,
                Some(Command::Input(input)) => core.handle_input(now(), input),
                Some(Command::Publish { room, payload, reply }) => {
                    let _ = reply.send(core.publish(now(), &room, payload));
                }
            },
            _ = sleep_until(deadline) => core.handle_timeout(now()),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
