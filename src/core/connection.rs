//! Getting and keeping a transport: attempts (token, then ticket, then the transport itself),
//! closes and what each close means, and the browser's online/offline/freeze lifecycle. The
//! background probe up the ladder is in `probe.rs`.

use alloc::string::String;

use rtlink_protocol::{ClientFrame, CloseAction, CloseCode, PROTOCOL_VERSION};

use super::backoff::Verdict as BackoffVerdict;
use super::event::{Event, OpenError, Output, TransportId, TransportKind};
use super::heartbeat::Verdict as HeartbeatVerdict;
use super::ladder::Strike;
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

/// How the primary attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The ticket step failed (or timed out: [`OpenError::Unreachable`]).
    TicketFailed(OpenError),
    /// The transport's own connection failed.
    OpenFailed(OpenError),
    /// It closed: reported by the glue (`reported`) or announced by a server `close` frame.
    Closed {
        code: Option<CloseCode>,
        reason: String,
        reported: bool,
    },
    /// No `welcome` before the first-frame deadline.
    NoWelcome,
    /// Heartbeat deadline (and liveness probe, if any) passed in silence.
    HeartbeatDead,
}

/// WebSocket's code for "the server is overloaded, try again later": an rtlink server full of
/// sessions closes a fresh WebSocket with it.
const TRY_AGAIN_LATER: u16 = 1013;

impl Client {
    pub(super) fn role(&self, id: TransportId) -> Role {
        match &self.phase {
            Phase::AwaitingTicket { id: primary } if *primary == id => Role::Primary,
            Phase::AwaitingWelcome { slot } | Phase::Open { slot, .. } if slot.id == id => {
                Role::Primary
            }
            Phase::Open {
                probe: Some(probe), ..
            } if probe.id() == Some(id) => Role::Probe,
            _ => Role::Stale,
        }
    }

    pub(super) fn connect(&mut self) {
        if !matches!(self.phase, Phase::Idle) {
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
            self.send(ClientFrame::Close {
                code: CloseCode::NORMAL,
                reason: "client closed".into(),
            });
        }
        self.close_transports(Some(CloseCode::NORMAL));
        self.shut_down("client closed");
        self.set_phase(Phase::Closed {
            reason: CloseReason::ClientClosed,
        });
    }

    /// Stops for good for a reason that is not the app's choice.
    pub(super) fn terminate(&mut self, reason: CloseReason) {
        self.close_transports(None);
        self.shut_down("connection closed for good");
        self.emit(Event::Error {
            reason: reason.clone(),
        });
        self.set_phase(Phase::Closed { reason });
    }

    fn shut_down(&mut self, why: &str) {
        self.lose_transport();
        self.timers.stop_all();
        let failed = self.sends.drain();
        self.fail_sends(failed, why);
    }

    /// Asks the glue to close every transport of the current phase (a pending ticket fetch
    /// included: closing its id aborts it).
    fn close_transports(&mut self, code: Option<CloseCode>) {
        let (primary, probe) = match &self.phase {
            Phase::AwaitingTicket { id } => (Some(*id), None),
            Phase::AwaitingWelcome { slot } => (Some(slot.id), None),
            Phase::Open { slot, probe } => (Some(slot.id), probe.and_then(|p| p.id())),
            _ => (None, None),
        };
        if let Some(id) = primary {
            self.push_out(Output::CloseTransport { id, code });
        }
        if let Some(id) = probe {
            self.timers.stop(Timer::ProbeFirstFrame);
            self.push_out(Output::CloseTransport { id, code: None });
        }
    }

    /// The session no longer has a transport: stop everything that assumed one.
    pub(super) fn lose_transport(&mut self) {
        let was_open = self.is_open();
        self.heartbeat.stop();
        for timer in [
            Timer::FirstFrame,
            Timer::ProbeStart,
            Timer::ProbeFirstFrame,
            Timer::Stable,
        ] {
            self.timers.stop(timer);
        }
        self.sends.pause();
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
        self.endpoints.choose(self.now);
        self.set_phase(Phase::AwaitingToken);
        self.push_out(Output::RequestToken);
    }

    pub(super) fn on_token_ready(&mut self, token: String) {
        match self.phase {
            Phase::AwaitingToken => {
                let id = self.mint_transport_id();
                let resume = self.resume_token();
                let endpoint = self.endpoints.current();
                self.push_out(Output::FetchTicket {
                    id,
                    endpoint,
                    token,
                    resume,
                    probe: false,
                });
                // The ticket step has the same deadline as a transport: a server that does not
                // answer in time is unreachable.
                self.timers.set(
                    Timer::FirstFrame,
                    self.now.plus(self.cfg.first_frame_timeout_ms),
                );
                self.set_phase(Phase::AwaitingTicket { id });
            }
            Phase::Open {
                probe: Some(Probe::AwaitingToken { kind }),
                ..
            } => self.fetch_probe_ticket(kind, token),
            _ => {}
        }
    }

    pub(super) fn on_token_failed(&mut self, terminal: bool) {
        match self.phase {
            Phase::AwaitingToken if terminal => self.terminate(CloseReason::TokenFailed),
            Phase::AwaitingToken => self.retry_later(None),
            Phase::Open {
                probe: Some(Probe::AwaitingToken { .. }),
                ..
            } => {
                self.drop_probe(false);
                self.schedule_probe();
            }
            _ => {}
        }
    }

    pub(super) fn on_ticket_issued(&mut self, id: TransportId, ticket: String) {
        match self.role(id) {
            Role::Primary if matches!(self.phase, Phase::AwaitingTicket { id: primary } if primary == id) =>
            {
                // The server admits: a strike held from the last attempt counts now, and may
                // move this attempt one rung down.
                self.endpoints.on_answer();
                if let Some(fallback) = self.ladder.on_ticket_issued() {
                    self.emit(Event::Fallback(fallback));
                }
                let kind = self.ladder.current();
                let endpoint = self.endpoints.current();
                self.push_out(Output::OpenTransport {
                    id,
                    endpoint,
                    kind,
                    ticket,
                });
                self.timers.set(
                    Timer::FirstFrame,
                    self.now.plus(self.cfg.first_frame_timeout_ms),
                );
                self.set_phase(Phase::AwaitingWelcome {
                    slot: Slot::new(id, kind),
                });
            }
            Role::Probe => self.open_probe(id, ticket),
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
            Phase::Open {
                probe: Some(Probe::Opening { slot }),
                ..
            } if role == Role::Probe => slot,
            _ => return,
        };
        slot.opened = true;
        // SSE and long polling resume the session their ticket names; a WebSocket says hello.
        if slot.kind == TransportKind::WebSocket {
            let frame = ClientFrame::Hello {
                v: PROTOCOL_VERSION,
                resume,
            };
            self.push_out(Output::Send { id, frame });
        }
    }

    pub(super) fn on_transport_closed(
        &mut self,
        id: TransportId,
        code: Option<CloseCode>,
        reason: String,
    ) {
        match self.role(id) {
            Role::Primary => self.on_primary_end(End::Closed {
                code,
                reason,
                reported: true,
            }),
            Role::Probe => {
                self.drop_probe(false);
                self.schedule_probe();
            }
            Role::Stale => {}
        }
    }

    pub(super) fn on_open_failed(&mut self, id: TransportId, error: OpenError) {
        match self.role(id) {
            Role::Primary if matches!(self.phase, Phase::AwaitingTicket { .. }) => {
                self.on_primary_end(End::TicketFailed(error))
            }
            Role::Primary => self.on_primary_end(End::OpenFailed(error)),
            Role::Probe => {
                self.drop_probe(false);
                self.schedule_probe();
            }
            Role::Stale => {}
        }
    }

    pub(super) fn on_first_frame_timeout(&mut self) {
        match self.phase {
            Phase::AwaitingTicket { id } => {
                self.push_out(Output::CloseTransport { id, code: None });
                self.on_primary_end(End::TicketFailed(OpenError::Unreachable));
            }
            Phase::AwaitingWelcome { .. } => self.on_primary_end(End::NoWelcome),
            _ => {}
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
        let ping = if force {
            self.heartbeat.force_probe(self.now)
        } else {
            self.heartbeat.check_overdue(self.now)
        };
        if ping {
            self.send(ClientFrame::Ping);
        }
    }

    /// The primary attempt or transport ended: decide what it means for the ladder and for the
    /// next attempt.
    pub(super) fn on_primary_end(&mut self, end: End) {
        let (slot, probe) = match &self.phase {
            Phase::AwaitingTicket { .. } => (None, None),
            Phase::AwaitingWelcome { slot } => (Some(*slot), None),
            Phase::Open { slot, probe } => (Some(*slot), *probe),
            _ => return,
        };
        let reported = matches!(
            end,
            End::TicketFailed(_) | End::OpenFailed(_) | End::Closed { reported: true, .. }
        );
        if let (false, Some(slot)) = (reported, slot) {
            let code = (end == End::HeartbeatDead).then_some(CloseCode::HEARTBEAT_TIMEOUT);
            self.push_out(Output::CloseTransport { id: slot.id, code });
        }
        if let Some(id) = probe.and_then(|p| p.id()) {
            self.push_out(Output::CloseTransport { id, code: None });
        }
        self.lose_transport();
        self.phase = Phase::Idle; // placeholder: every path below sets the real phase
        match slot {
            Some(slot) => self.judge_transport(slot, &end),
            None => self.ladder.on_ticket_refused(),
        }
        self.judge_endpoint(&end);

        match end {
            End::TicketFailed(error) | End::OpenFailed(error) => match error {
                OpenError::Unauthorized => self.reauthenticate(),
                OpenError::Forbidden => self.terminate(CloseReason::Forbidden),
                OpenError::SessionUnknown => self.retry_new_session(),
                OpenError::Overloaded { retry_after_ms } => self.retry_later(retry_after_ms),
                OpenError::Network | OpenError::Unreachable => self.retry_later(None),
            },
            End::NoWelcome | End::HeartbeatDead | End::Closed { code: None, .. } => {
                self.retry_later(None)
            }
            End::Closed {
                code: Some(code),
                reason,
                ..
            } => match code.action() {
                CloseAction::Terminal => self.terminate(CloseReason::Server { code, reason }),
                CloseAction::RetryWithBackoff | CloseAction::Superseded => self.retry_later(None),
                CloseAction::RetryAfterServerDelay => self.retry_after_drain(),
                CloseAction::Reauthenticate => self.reauthenticate(),
                CloseAction::RetryNewSession => self.retry_new_session(),
            },
        }
    }

    /// What the end of a transport says about its rung (see [`super::ladder`]). A ticket step
    /// that failed says nothing about any transport: the strike from before is discarded.
    fn judge_transport(&mut self, slot: Slot, end: &End) {
        let strike = match end {
            End::OpenFailed(OpenError::Network | OpenError::Unreachable) => {
                Some(Strike::OpenFailed)
            }
            End::OpenFailed(OpenError::Overloaded { .. }) => {
                self.ladder.on_ticket_refused();
                None
            }
            // A close code an rtlink server sends (4000-4999, or 1013 "try again later" when it is
            // full) proves the transport carries its frames; anything else before the first frame
            // (1006 for a cut connection, a proxy's 1011, …) is the transport failing.
            End::Closed { code, .. } if !slot.got_frame => match code.map(|c| c.0) {
                Some(4000..=4999 | TRY_AGAIN_LATER) => None,
                _ if slot.opened => Some(Strike::DiedBeforeFirstFrame),
                _ => Some(Strike::OpenFailed),
            },
            End::NoWelcome => Some(Strike::NoWelcome),
            _ => None,
        };
        if let Some(strike) = strike {
            self.ladder.on_transport_failed(slot.kind, strike);
        }
    }

    /// What the end of an attempt says about its endpoint (see [`super::endpoints`]): only the
    /// ticket step judges it (a drain is handled in `retry_after_drain`).
    fn judge_endpoint(&mut self, end: &End) {
        match end {
            End::TicketFailed(OpenError::Network | OpenError::Unreachable) => {
                self.endpoints.on_unreachable(self.now, &mut self.rng);
            }
            End::TicketFailed(_) => self.endpoints.on_answer(),
            _ => {}
        }
    }

    /// Counts a failure and waits a backoff delay; `server_delay_ms` (a `Retry-After`) makes it
    /// a jittered window starting there instead (see [`super::backoff`]).
    fn retry_later(&mut self, server_delay_ms: Option<u64>) {
        if self.suspended() {
            self.set_phase(Phase::Offline);
            return;
        }
        if self.backoff.record_failure() == BackoffVerdict::GiveUp {
            let attempts = self.backoff.failures();
            self.terminate(CloseReason::GaveUp { attempts });
            return;
        }
        let mut delay = self.backoff.next_delay(&mut self.rng);
        if let Some(server_delay) = server_delay_ms {
            delay = delay.max(super::backoff::server_delay(server_delay, &mut self.rng));
        }
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
    /// and a drain is not our failure, so the attempt count stays. The node is going away: with
    /// several endpoints, the next attempt goes to another.
    fn retry_after_drain(&mut self) {
        self.endpoints.on_draining(self.now, &mut self.rng);
        if !self.backoff.has_drain_window() {
            return self.retry_later(None);
        }
        if self.suspended() {
            return self.set_phase(Phase::Offline);
        }
        let delay = self.backoff.next_delay(&mut self.rng);
        self.wait(delay);
    }

    /// 401 or 4009: a fresh token and one immediate retry. Another auth failure within
    /// [`super::Config::reauth_window_ms`] of that re-authentication is final: a fresh token did
    /// not help, and looping would only load the server.
    fn reauthenticate(&mut self) {
        if self
            .reauth_at
            .is_some_and(|at| self.now.millis_since(at) < self.cfg.reauth_window_ms)
        {
            return self.terminate(CloseReason::Unauthorized);
        }
        self.reauth_at = Some(self.now);
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
        if matches!(
            self.phase,
            Phase::Idle | Phase::Offline | Phase::Closed { .. }
        ) {
            return;
        }
        self.close_transports(None);
        self.lose_transport();
        self.timers.stop(Timer::Reconnect);
        self.set_phase(Phase::Offline);
    }

    /// Online or resumed: reconnect at once if nothing else holds us back.
    pub(super) fn resume_if_possible(&mut self) {
        if matches!(self.phase, Phase::Offline) && !self.suspended() {
            self.start_attempt();
        }
    }
}
