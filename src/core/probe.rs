//! The probe up the ladder: while open on a lower rung, the client periodically opens the next
//! higher rung in the background, as a **probe** of its session, and moves there only once the
//! probe has proven it delivers.
//!
//! The switch has two steps so that a probe can never cost the working transport:
//! 1. The probe opens with a ticket asking for a probe of the session (`probe: true`). The server
//!    answers with a `welcome` on the probe but leaves the session on the current transport.
//! 2. When that `welcome` arrives, the client sends `switch` on the probe and makes it its
//!    primary: it closes the old transport itself, re-subscribes every room from its offsets and
//!    resends unacknowledged publishes (offsets and publish ids make the overlap harmless). Only
//!    on `switch` does the server attach the session to the probe and close the old one (4006).
//!
//! A probe whose `welcome` never arrives (a buffering proxy holds it) is simply closed at its
//! first-frame deadline, and tried again about [`super::Config::probe_interval_ms`] later.

use alloc::string::String;

use rtlink_protocol::{ClientFrame, CloseCode};

use super::event::{Output, TransportId};
use super::state::{Phase, Probe, Slot};
use super::timer::Timer;
use super::Client;

impl Client {
    /// While open on a lower rung, plan the next probe of the rung above (±25 % jitter so a
    /// fleet of clients behind the same proxy does not probe in lockstep).
    pub(super) fn schedule_probe(&mut self) {
        let Phase::Open { slot, probe: None } = &self.phase else {
            return;
        };
        if self.ladder.probe_target(slot.kind).is_none() {
            return;
        }
        let interval = self.cfg.probe_interval_ms;
        let delay = self
            .rng
            .between(interval - interval / 4, interval + interval / 4);
        self.timers.set(Timer::ProbeStart, self.now.plus(delay));
    }

    pub(super) fn start_probe(&mut self) {
        let Phase::Open { slot, probe: None } = &self.phase else {
            return;
        };
        let Some(kind) = self.ladder.probe_target(slot.kind) else {
            return;
        };
        if let Phase::Open { probe, .. } = &mut self.phase {
            *probe = Some(Probe::AwaitingToken { kind });
        }
        self.push_out(Output::RequestToken);
    }

    /// The token for the probe arrived: ask for a probe ticket of the session.
    pub(super) fn fetch_probe_ticket(&mut self, kind: super::TransportKind, token: String) {
        let Some(resume) = self.session.as_ref().map(|s| s.resume_token.clone()) else {
            self.drop_probe(false);
            return;
        };
        let id = self.mint_transport_id();
        // The probe is of this session, so it goes to the session's endpoint.
        let endpoint = self.endpoints.current();
        self.push_out(Output::FetchTicket {
            id,
            endpoint,
            token,
            resume: Some(resume),
            probe: true,
        });
        self.timers.set(
            Timer::ProbeFirstFrame,
            self.now.plus(self.cfg.first_frame_timeout_ms),
        );
        if let Phase::Open { probe, .. } = &mut self.phase {
            *probe = Some(Probe::AwaitingTicket { id, kind });
        }
    }

    /// The probe's ticket arrived: open the probe transport.
    pub(super) fn open_probe(&mut self, id: TransportId, ticket: String) {
        let Phase::Open {
            probe: Some(Probe::AwaitingTicket { id: probe_id, kind }),
            ..
        } = self.phase
        else {
            return;
        };
        if probe_id != id {
            return;
        }
        let endpoint = self.endpoints.current();
        self.push_out(Output::OpenTransport {
            id,
            endpoint,
            kind,
            ticket,
        });
        self.timers.set(
            Timer::ProbeFirstFrame,
            self.now.plus(self.cfg.first_frame_timeout_ms),
        );
        if let Phase::Open { probe, .. } = &mut self.phase {
            *probe = Some(Probe::Opening {
                slot: Slot::new(id, kind),
            });
        }
    }

    /// The probe delivered its `welcome`: commit the switch (see the module docs). Returns the
    /// probe's slot, now the transport awaiting the session's resync.
    pub(super) fn commit_probe(&mut self) -> Option<Slot> {
        let Phase::Open {
            slot: old,
            probe: Some(Probe::Opening { slot: probe }),
        } = self.phase
        else {
            return None;
        };
        self.push_out(Output::Send {
            id: probe.id,
            frame: ClientFrame::Switch,
        });
        // Close the old transport in the same step, so there is never a moment with two
        // primaries. Anything it still delivers is from a stale id, and the re-subscribe after
        // the switch replays it by offset.
        self.push_out(Output::CloseTransport {
            id: old.id,
            code: Some(CloseCode::SUPERSEDED),
        });
        self.heartbeat.stop();
        self.timers.stop(Timer::ProbeFirstFrame);
        self.sends.pause();
        self.rooms.on_transport_lost();
        let mut slot = probe;
        slot.got_frame = true;
        self.phase = Phase::AwaitingWelcome { slot };
        Some(slot)
    }

    /// The probe did not deliver a welcome in time.
    pub(super) fn probe_failed(&mut self) {
        self.drop_probe(true);
        self.schedule_probe();
    }

    /// Forgets the probe; `close` asks the glue to close it (not needed when the glue reported
    /// its end).
    pub(super) fn drop_probe(&mut self, close: bool) {
        let Phase::Open { probe, .. } = &mut self.phase else {
            return;
        };
        let Some(old) = probe.take() else { return };
        self.timers.stop(Timer::ProbeFirstFrame);
        if let (true, Some(id)) = (close, old.id()) {
            self.push_out(Output::CloseTransport { id, code: None });
        }
    }
}
