//! Test harness for the sans-IO core: a virtual clock that jumps to the next deadline, and a
//! scripted fake server that speaks the protocol well enough to keep room histories with
//! offsets, acknowledge publishes with dedupe by id, track presence per connection, resume
//! sessions, and fail or kill transports of a given kind in the ways real networks do.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rtlink::core::{
    Client, ClientFrame, CloseCode, Config, ErrorCode, Event, Input, Instant, OpenError, Output,
    SendId, ServerFrame, State, TransportId, TransportKind,
};

pub const LATENCY_MS: u64 = 5;

mod fake_server;
pub use fake_server::*;

/// One browser tab: a client plus everything it did.
#[derive(Debug)]
pub struct Tab {
    pub client: Client,
    pub user: String,
    /// Answer RequestToken automatically (else the test feeds TokenReady itself).
    pub auto_token: bool,
    pub token_requests: u32,
    pub events: Vec<Event>,
    pub opens: Vec<(TransportId, TransportKind, Option<String>)>,
    pub closes: Vec<(TransportId, Option<CloseCode>)>,
    pub sent: Vec<(TransportId, ClientFrame)>,
    /// Transports the glue holds: opened by the core and not yet closed by either side.
    pub live: BTreeSet<TransportId>,
    /// Offsets delivered to the app, per room.
    pub delivered: BTreeMap<String, Vec<u64>>,
    /// Timers and deliveries are held until then (a frozen or sleeping page).
    pub paused_until: Option<Instant>,
}

impl Tab {
    pub fn states(&self) -> Vec<State> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::StateChanged { state, .. } => Some(state.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn is_open(&self) -> bool {
        matches!(self.client.state(), State::Open { .. })
    }

    pub fn open_kind(&self) -> Option<TransportKind> {
        match self.client.state() {
            State::Open { transport, .. } => Some(*transport),
            _ => None,
        }
    }

    pub fn acked(&self, id: SendId) -> Option<u64> {
        self.events.iter().find_map(|e| match e {
            Event::PublishAcked { send_id, offset } if *send_id == id => Some(*offset),
            _ => None,
        })
    }

    pub fn failed(&self, id: SendId) -> Option<ErrorCode> {
        self.events.iter().find_map(|e| match e {
            Event::PublishFailed { send_id, code, .. } if *send_id == id => Some(*code),
            _ => None,
        })
    }

    pub fn count<F: Fn(&Event) -> bool>(&self, f: F) -> usize {
        self.events.iter().filter(|e| f(e)).count()
    }
}

pub struct Sim {
    pub now: Instant,
    pub tabs: Vec<Tab>,
    pub server: FakeServer,
    /// (deliver at, tab, input), kept in time order (stable for equal times).
    pub queue: VecDeque<(Instant, usize, Input)>,
}

impl Sim {
    /// `users[i]` is tab i's user; two tabs with the same user are one person with two tabs.
    pub fn new(cfg: Config, users: &[&str]) -> Self {
        let now = Instant::from_millis(1_000);
        let tabs = users
            .iter()
            .enumerate()
            .map(|(i, user)| Tab {
                client: Client::new(cfg.clone(), now, 0xC0FFEE + i as u64),
                user: (*user).to_owned(),
                auto_token: true,
                token_requests: 0,
                events: Vec::new(),
                opens: Vec::new(),
                closes: Vec::new(),
                sent: Vec::new(),
                live: BTreeSet::new(),
                delivered: BTreeMap::new(),
                paused_until: None,
            })
            .collect();
        Self {
            now,
            tabs,
            server: FakeServer::new(),
            queue: VecDeque::new(),
        }
    }

    pub fn one(cfg: Config) -> Self {
        Self::new(cfg, &["ana"])
    }

    pub fn at(&self, ms_from_now: u64) -> Instant {
        self.now.plus(ms_from_now)
    }

    pub fn input(&mut self, tab: usize, input: Input) {
        let now = self.now;
        self.note_input(tab, &input);
        self.tabs[tab].client.handle_input(now, input);
        self.drain();
    }

    pub fn publish(
        &mut self,
        tab: usize,
        room: &str,
        payload: &str,
    ) -> Result<SendId, rtlink::core::SendError> {
        let now = self.now;
        let r = self.tabs[tab].client.publish(now, room, payload.to_owned());
        self.drain();
        r
    }

    /// Connect a tab, subscribe to rooms, and run until open and subscribed.
    pub fn connect(&mut self, tab: usize, rooms: &[&str]) {
        self.input(tab, Input::Connect);
        for room in rooms {
            self.input(
                tab,
                Input::Subscribe {
                    room: (*room).to_owned(),
                    history: 0,
                },
            );
        }
        self.run_for(200);
    }

    pub fn run_for(&mut self, ms: u64) {
        let t = self.now.plus(ms);
        self.run_until(t);
    }

    /// Advances the virtual clock event by event (jumping to the next deadline) up to `t`.
    pub fn run_until(&mut self, t: Instant) {
        for _ in 0..1_000_000 {
            self.drain();
            match self.next_event() {
                Some(next) if next <= t => {
                    self.now = self.now.max(next);
                    self.fire_due();
                }
                _ => {
                    self.now = self.now.max(t);
                    self.drain();
                    return;
                }
            }
        }
        panic!("simulation did not settle");
    }

    fn next_event(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                best = Some(best.map_or(t, |b| b.min(t)));
            }
        };
        for (at, tab, _) in &self.queue {
            consider(Some((*at).max(self.tabs[*tab].paused_until.unwrap_or(*at))));
        }
        for tab in &self.tabs {
            consider(
                tab.client
                    .poll_timeout()
                    .map(|t| t.max(tab.paused_until.unwrap_or(t))),
            );
        }
        for ((_, _), conn) in &self.server.conns {
            if conn.session.is_some() {
                consider(Some(conn.next_ping));
            }
        }
        for s in self.server.sessions.values() {
            consider(s.detached_at.map(|d| d.plus(self.server.presence_grace_ms)));
        }
        best
    }

    fn paused(&self, tab: usize) -> bool {
        self.tabs[tab].paused_until.is_some_and(|p| p > self.now)
    }

    fn fire_due(&mut self) {
        let now = self.now;
        // Timers first: a page waking from sleep runs its late timers before queued network events.
        for i in 0..self.tabs.len() {
            if self.paused(i) {
                continue;
            }
            if self.tabs[i].client.poll_timeout().is_some_and(|t| t <= now) {
                self.tabs[i].client.handle_timeout(now);
                self.drain();
            }
        }
        // Network deliveries due now, in order.
        let mut held = VecDeque::new();
        while let Some((at, tab, input)) = self.queue.pop_front() {
            if at > now {
                held.push_back((at, tab, input));
                continue;
            }
            if self.paused(tab) {
                held.push_back((at, tab, input));
                continue;
            }
            self.note_input(tab, &input);
            self.tabs[tab].client.handle_input(now, input);
            self.drain();
        }
        // Deliveries queued during the loop above went straight into `self.queue`; keep order.
        held.extend(self.queue.drain(..));
        self.queue = held;
        // Server pings and presence grace.
        let due: Vec<(usize, TransportId)> = self
            .server
            .conns
            .iter()
            .filter(|(_, c)| c.session.is_some() && c.next_ping <= now)
            .map(|(k, _)| *k)
            .collect();
        for (tab, id) in due {
            let interval = self.server.ping_interval_ms;
            if let Some(conn) = self.server.conns.get_mut(&(tab, id)) {
                conn.next_ping = now.plus(interval);
            }
            self.send_to_conn(tab, id, ServerFrame::Ping);
        }
        let expired: Vec<String> = self
            .server
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.detached_at
                    .is_some_and(|d| d.plus(self.server.presence_grace_ms) <= now)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for sid in expired {
            self.end_session(&sid);
        }
        self.drain();
    }

    fn note_input(&mut self, tab: usize, input: &Input) {
        match input {
            Input::TransportClosed { id, .. } | Input::OpenFailed { id, .. } => {
                self.tabs[tab].live.remove(id);
            }
            Input::Subscribe { room, .. } | Input::Unsubscribe { room } => {
                self.tabs[tab].delivered.remove(room);
            }
            _ => {}
        }
    }

    fn deliver(&mut self, tab: usize, input: Input) {
        let at = self.now.plus(LATENCY_MS);
        self.queue.push_back((at, tab, input));
    }

    /// Handles every pending output of every tab, checking the invariants as it goes.
    pub fn drain(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.tabs.len() {
                while let Some(out) = self.tabs[i].client.poll_output() {
                    any = true;
                    self.on_output(i, out);
                    let tab = &self.tabs[i];
                    assert!(
                        tab.live.len() <= 2,
                        "more than one primary + one probe: {:?}",
                        tab.live
                    );
                }
            }
            if !any {
                return;
            }
        }
    }

    fn on_output(&mut self, tab: usize, out: Output) {
        match out {
            Output::RequestToken => {
                self.tabs[tab].token_requests += 1;
                if self.tabs[tab].auto_token {
                    let token = self.tabs[tab].user.clone();
                    self.deliver(tab, Input::TokenReady(token));
                }
            }
            Output::FetchTicket {
                id,
                endpoint,
                token,
                resume,
                probe,
            } => {
                self.tabs[tab].live.insert(id);
                self.fetch_ticket(tab, id, endpoint, token, resume, probe);
            }
            Output::OpenTransport {
                id,
                endpoint,
                kind,
                ticket,
            } => {
                let resume = self
                    .server
                    .tickets
                    .get(&ticket)
                    .and_then(|t| t.resume.clone());
                self.tabs[tab].opens.push((id, kind, resume));
                self.open(tab, id, endpoint, kind, ticket);
            }
            Output::Send { id, frame } => {
                self.tabs[tab].sent.push((id, frame.clone()));
                self.on_client_frame(tab, id, frame);
            }
            Output::CloseTransport { id, code } => {
                self.tabs[tab].closes.push((id, code));
                self.tabs[tab].live.remove(&id);
                self.detach(tab, id);
            }
            Output::Event(event) => {
                self.check_event(tab, &event);
                self.tabs[tab].events.push(event);
            }
        }
    }

    /// The app-facing invariant: per room, offsets strictly contiguous between resets.
    fn check_event(&mut self, tab: usize, event: &Event) {
        let t = &mut self.tabs[tab];
        match event {
            Event::Message { room, offset, .. } => {
                let list = t.delivered.entry(room.clone()).or_default();
                if let Some(last) = list.last() {
                    assert_eq!(
                        *offset,
                        last + 1,
                        "tab {tab} room {room}: got {offset} after {last}"
                    );
                }
                list.push(*offset);
            }
            Event::ResyncNeeded { room } => {
                t.delivered.remove(room);
            }
            _ => {}
        }
    }
}
