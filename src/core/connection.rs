//! Getting and keeping a transport: attempts, tokens, closes and what each close means, the
//! background probe up the ladder, and the browser's online/offline/freeze lifecycle.

use rtlink_protocol::{ClientFrame, CloseAction, CloseCode, PROTOCOL_VERSION};

use super::backoff::Verdict as BackoffVerdict;
use super::event::{Event, OpenError, Output, TransportId, TransportKind};
use super::heartbeat::Verdict as HeartbeatVerdict;
use super::state::{CloseReason, Phase, Probe, Slot};
use super::timer::Timer;
use super::Client;

/// Which of our transports an input is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Primary,
    Probe,
    /// Not a transport we track (closed, replaced, never ours): the input is ignored.
    Stale,
}

/// How the primary transport ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The glue could not open it.
    OpenFailed(OpenError),
    /// It closed: reported by the glue (`reported`) or announced by a server `close` frame.
    Closed { code: Option<CloseCode>, reason: String, reported: bool },
    /// No `welcome` before the first-frame deadline.
    NoWelcome,
    /// Heartbeat deadline (and liveness probe, if any) passed in silence.
    HeartbeatDead,
}

impl Client {
    pub(super) fn role(&self, id: TransportId) -> Role {
        match &self.phase {
            Phase::AwaitingWelcome { slot } | Phase::Open { slot, .. } if slot.id == id => Role::Primary,
            Phase::Open { probe: Some(Probe::Opening { slot }), .. } if slot.id == id => Role::Probe,
            _ => Role::Stale,
        }
    }

    pub(super) fn connect(&mut self) {
        if self.phase != Phase::Idle {
            return;
        }
        if self.suspended() {
            self.set_phase(Phase::Offline);
        } else {
            self.start_attempt();
        }
    }

    /// The app closed: say goodbye on an open session, fail what is pending, stop.
    pub(super) fn close_by_app(&mut self) {
        if self.is_open() {
            self.send(ClientFrame::Close { code: CloseCode::NORMAL, reason: "client closed".into() });
        }
        self.close_transports(Some(CloseCode::NORMAL));
        self.shut_down("client closed");
        self.set_phase(Phase::Closed { reason: CloseReason::ClientClosed });
    }

    /// Stops for good for a reason that is not the app's choice.
    pub(super) fn terminate(&mut self, reason: CloseReason) {
        self.close_transports(None);
        self.shut_down("connection closed for good");
        self.emit(Event::Error { reason: reason.clone() });
        self.set_phase(Phase::Closed { reason });
    }

    fn shut_down(&mut self, why: &str) {
        self.lose_transport();
        self.timers.stop_all();
        for removed in self.sends.drain() {
            self.emit(Event::PublishFailed {
                send_id: removed.send_id,
                code: rtlink_protocol::ErrorCode::Closed,
                reason: why.to_owned(),
            });
        }
    }

    /// Asks the glue to close every transport of the current phase.
    fn close_transports(&mut self, code: Option<CloseCode>) {
        let (primary, probe) = match &self.phase {
            Phase::AwaitingWelcome { slot } => (Some(slot.id), None),
            Phase::Open { slot, probe } => (Some(slot.id), probe.and_then(|p| p.slot()).map(|s| s.id)),
            _ => (None, None),
        };
        if let Some(id) = primary {
            self.out.push(Output::CloseTransport { id, code });
        }
        if let Some(id) = probe {
            self.timers.stop(Timer::ProbeFirstFrame);
            self.out.push(Output::CloseTransport { id, code: None });
        }
    }

    /// The session no longer has a transport: stop everything that assumed one.
    fn lose_transport(&mut self) {
        let was_open = self.is_open();
        self.heartbeat.stop();
        for timer in [Timer::FirstFrame, Timer::ProbeStart, Timer::ProbeFirstFrame, Timer::Stable] {
            self.timers.stop(timer);
        }
        self.sends.pause();
        self.typing.reset_own();
        self.rooms.on_transport_lost();
        if was_open {
            let now = self.now;
            if let Some(session) = &mut self.session {
                session.lost_at.get_or_insert(now);
            }
        }
    }

    /// The resume token, if the session can still be resumed.
    pub(super) fn resume_token(&self) -> Option<String> {
        let session = self.session.as_ref()?;
        match session.lost_at {
            Some(lost) if self.now.millis_since(lost) >= session.resume_window_ms => None,
            _ => Some(session.resume_token.clone()),
        }
    }

    pub(super) fn start_attempt(&mut self) {
        self.timers.stop(Timer::Reconnect);
        self.set_phase(Phase::AwaitingToken);
        self.out.push(Output::RequestToken);
    }

    pub(super) fn on_token_ready(&mut self, token: String) {
        match self.phase {
            Phase::AwaitingToken => {
                let kind = self.ladder.current();
                let id = self.mint_transport_id();
                let resume = self.resume_token();
                self.out.push(Output::OpenTransport { id, kind, token, resume });
                self.timers.set(Timer::FirstFrame, self.now.plus(self.cfg.first_frame_timeout_ms));
                self.set_phase(Phase::AwaitingWelcome { slot: Slot::new(id, kind) });
            }
            Phase::Open { probe: Some(Probe::AwaitingToken { kind }), .. } => {
                let id = self.mint_transport_id();
                let resume = self.session.as_ref().map(|s| s.resume_token.clone());
                self.out.push(Output::OpenTransport { id, kind, token, resume });
                self.timers.set(Timer::ProbeFirstFrame, self.now.plus(self.cfg.first_frame_timeout_ms));
                if let Phase::Open { probe, .. } = &mut self.phase {
                    *probe = Some(Probe::Opening { slot: Slot::new(id, kind) });
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_token_failed(&mut self, terminal: bool) {
        match self.phase {
            Phase::AwaitingToken if terminal => self.terminate(CloseReason::TokenFailed),
            Phase::AwaitingToken => self.retry_later(None),
            Phase::Open { probe: Some(Probe::AwaitingToken { .. }), .. } => {
                self.drop_probe(false);
                self.schedule_probe();
            }
            _ => {}
        }
    }

    pub(super) fn on_transport_opened(&mut self, id: TransportId) {
        let role = self.role(id);
        let resume = match role {
            Role::Primary => self.resume_token(),
            Role::Probe => self.session.as_ref().map(|s| s.resume_token.clone()),
            Role::Stale => return,
        };
        let slot = match &mut self.phase {
            Phase::AwaitingWelcome { slot } => slot,
            Phase::Open { probe: Some(Probe::Opening { slot }), .. } if role == Role::Probe => slot,
            _ => return,
        };
        slot.opened = true;
        // SSE and long polling carry `resume` in the URL; a WebSocket says hello first.
        if slot.kind == TransportKind::WebSocket {
            let frame = ClientFrame::Hello { v: PROTOCOL_VERSION, resume };
            self.out.push(Output::Send { id, frame });
        }
    }

    pub(super) fn on_transport_closed(&mut self, id: TransportId, code: Option<CloseCode>, reason: String) {
        match self.role(id) {
            Role::Primary => self.on_primary_end(End::Closed { code, reason, reported: true }),
            Role::Probe => {
                self.drop_probe(false);
                self.schedule_probe();
            }
            Role::Stale => {}
        }
    }

    pub(super) fn on_open_failed(&mut self, id: TransportId, error: OpenError) {
        match self.role(id) {
            Role::Primary => self.on_primary_end(End::OpenFailed(error)),
            Role::Probe => {
                self.drop_probe(false);
                self.schedule_probe();
            }
            Role::Stale => {}
        }
    }

    pub(super) fn on_first_frame_timeout(&mut self) {
        if matches!(self.phase, Phase::AwaitingWelcome { .. }) {
            self.on_primary_end(End::NoWelcome);
        }
    }

    pub(super) fn on_heartbeat_timeout(&mut self) {
        if !self.is_open() {
            return;
        }
        match self.heartbeat.on_timeout(self.now) {
            HeartbeatVerdict::Alive => {}
            HeartbeatVerdict::SendProbe => self.send(ClientFrame::Ping),
            HeartbeatVerdict::Dead => self.on_primary_end(End::HeartbeatDead),
        }
    }

    /// Page visible (`force == false`: only if the deadline passed) or resumed (`force`: always):
    /// ping to learn whether the transport survived, instead of trusting throttled timers.
    pub(super) fn check_liveness(&mut self, force: bool) {
        if !self.is_open() {
            return;
        }
        let ping = if force { self.heartbeat.force_probe(self.now) } else { self.heartbeat.check_overdue(self.now) };
        if ping {
            self.send(ClientFrame::Ping);
        }
    }

    /// The primary transport ended: decide what the close means, for the ladder and for the
    /// next attempt.
    pub(super) fn on_primary_end(&mut self, end: End) {
        let (slot, probe) = match &self.phase {
            Phase::AwaitingWelcome { slot } => (*slot, None),
            Phase::Open { slot, probe } => (*slot, *probe),
            _ => return,
        };
        let reported = matches!(end, End::OpenFailed(_) | End::Closed { reported: true, .. });
        if !reported {
            let code = (end == End::HeartbeatDead).then_some(CloseCode::HEARTBEAT_TIMEOUT);
            self.out.push(Output::CloseTransport { id: slot.id, code });
        }
        let probe_deadline = self.timers.get(Timer::ProbeFirstFrame);
        self.lose_transport();
        self.phase = Phase::Idle; // placeholder: every path below sets the real phase

        let action = match &end {
            End::Closed { code: Some(code), .. } => Some(code.action()),
            _ => None,
        };
        // The server moved our session to the probe before its welcome reached us: the probe
        // carries the session now, wait for its welcome instead of reconnecting.
        if action == Some(CloseAction::Superseded) {
            if let Some(Probe::Opening { slot: probe_slot }) = probe {
                let deadline = probe_deadline.unwrap_or(self.now.plus(self.cfg.first_frame_timeout_ms));
                self.timers.set(Timer::FirstFrame, deadline);
                self.set_phase(Phase::AwaitingWelcome { slot: probe_slot });
                return;
            }
        }
        if let Some(probe_slot) = probe.and_then(|p| p.slot()) {
            self.out.push(Output::CloseTransport { id: probe_slot.id, code: None });
        }

        let fallback = match &end {
            End::OpenFailed(OpenError::Network) => self.ladder.on_open_failed(slot.kind),
            End::Closed { code, .. } if !slot.got_frame => match code.map(|c| c.action()) {
                None | Some(CloseAction::RetryWithBackoff) if slot.opened => {
                    self.ladder.on_died_before_first_frame(slot.kind)
                }
                None | Some(CloseAction::RetryWithBackoff) => self.ladder.on_open_failed(slot.kind),
                _ => None,
            },
            End::NoWelcome => self.ladder.on_no_welcome(slot.kind),
            _ => None,
        };
        if let Some(fallback) = fallback {
            self.emit(Event::Fallback(fallback));
        }

        match end {
            End::OpenFailed(OpenError::Unauthorized) => self.reauthenticate(),
            End::OpenFailed(OpenError::Forbidden) => self.terminate(CloseReason::Forbidden),
            End::OpenFailed(OpenError::SessionUnknown) => self.retry_new_session(),
            End::OpenFailed(OpenError::Overloaded { retry_after_ms }) => self.retry_later(retry_after_ms),
            End::OpenFailed(OpenError::Network) | End::NoWelcome | End::HeartbeatDead => self.retry_later(None),
            End::Closed { code: None, .. } => self.retry_later(None),
            End::Closed { code: Some(code), reason, .. } => match code.action() {
                CloseAction::Terminal => self.terminate(CloseReason::Server { code, reason }),
                CloseAction::RetryWithBackoff | CloseAction::Superseded => self.retry_later(None),
                CloseAction::RetryAfterServerDelay => self.retry_after_server_delay(),
                CloseAction::Reauthenticate => self.reauthenticate(),
                CloseAction::RetryNewSession => self.retry_new_session(),
            },
        }
    }

    /// Counts a failure and waits a backoff delay (at least `min_delay_ms`).
    fn retry_later(&mut self, min_delay_ms: Option<u64>) {
        if self.suspended() {
            self.set_phase(Phase::Offline);
            return;
        }
        if self.backoff.record_failure() == BackoffVerdict::GiveUp {
            let attempts = self.backoff.failures();
            self.terminate(CloseReason::GaveUp { attempts });
            return;
        }
        let delay = self.backoff.next_delay(&mut self.rng).max(min_delay_ms.unwrap_or(0));
        self.wait(delay);
    }

    fn wait(&mut self, delay_ms: u64) {
        let until = self.now.plus(delay_ms);
        self.timers.set(Timer::Reconnect, until);
        self.set_phase(Phase::BackingOff { until });
    }

    fn retry_now(&mut self) {
        if self.suspended() {
            self.set_phase(Phase::Offline);
        } else {
            self.start_attempt();
        }
    }

    /// 4008: the server is draining. Its `reconnect_after` window replaces the backoff delay,
    /// and a drain is not our failure, so the attempt count stays.
    fn retry_after_server_delay(&mut self) {
        if !self.backoff.has_drain_window() {
            return self.retry_later(None);
        }
        if self.suspended() {
            return self.set_phase(Phase::Offline);
        }
        let delay = self.backoff.next_delay(&mut self.rng);
        self.wait(delay);
    }

    /// 401 or 4009: a fresh token and one immediate retry; a second failure in a row is final.
    fn reauthenticate(&mut self) {
        if self.auth_failures >= 1 {
            return self.terminate(CloseReason::Unauthorized);
        }
        self.auth_failures += 1;
        self.retry_now();
    }

    /// 404 unknown_session or 4007: forget the resume token and start a new session at once
    /// (rooms re-subscribe from their offsets). Twice in a row without a welcome: back off.
    fn retry_new_session(&mut self) {
        self.session = None;
        if self.new_session_retry {
            return self.retry_later(None);
        }
        self.new_session_retry = true;
        self.retry_now();
    }

    /// Offline or frozen: drop the transport, keep everything else, burn no attempts.
    pub(super) fn suspend(&mut self) {
        if matches!(self.phase, Phase::Idle | Phase::Offline | Phase::Closed { .. }) {
            return;
        }
        self.close_transports(None);
        self.lose_transport();
        self.timers.stop(Timer::Reconnect);
        self.set_phase(Phase::Offline);
    }

    /// Online or resumed: reconnect at once if nothing else holds us back.
    pub(super) fn resume_if_possible(&mut self) {
        if self.phase == Phase::Offline && !self.suspended() {
            self.start_attempt();
        }
    }

    /// While open on a lower rung, plan the next probe of the rung above (±25 % jitter so a
    /// fleet of clients behind the same proxy does not probe in lockstep).
    pub(super) fn schedule_probe(&mut self) {
        let Phase::Open { slot, probe: None } = &self.phase else { return };
        if self.ladder.probe_target(slot.kind).is_none() {
            return;
        }
        let interval = self.cfg.probe_interval_ms;
        let delay = self.rng.between(interval - interval / 4, interval + interval / 4);
        self.timers.set(Timer::ProbeStart, self.now.plus(delay));
    }

    pub(super) fn start_probe(&mut self) {
        let Phase::Open { slot, probe: None } = &self.phase else { return };
        let Some(kind) = self.ladder.probe_target(slot.kind) else { return };
        if let Phase::Open { probe, .. } = &mut self.phase {
            *probe = Some(Probe::AwaitingToken { kind });
        }
        self.out.push(Output::RequestToken);
    }

    /// The probe did not deliver a welcome in time.
    pub(super) fn probe_failed(&mut self) {
        self.drop_probe(true);
        self.schedule_probe();
    }

    /// Forgets the probe; `close` asks the glue to close it (not needed when the glue reported
    /// its end).
    pub(super) fn drop_probe(&mut self, close: bool) {
        let Phase::Open { probe, .. } = &mut self.phase else { return };
        let Some(old) = probe.take() else { return };
        self.timers.stop(Timer::ProbeFirstFrame);
        if let (true, Some(slot)) = (close, old.slot()) {
            self.out.push(Output::CloseTransport { id: slot.id, code: None });
        }
    }
}
