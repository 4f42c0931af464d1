//! The transport carrying a session (its attachment), a probe beside it, and moving the
//! session between them.

use std::time::Instant;

use rtlink_protocol::{CloseCode, ServerFrame};
use tokio::sync::oneshot;

use super::{OutFrame, Session, SessionState};
use crate::broker::encode_frame;
use crate::config::TransportKind;
use crate::limits::ConnGuard;

/// The transport currently carrying a session.
#[derive(Debug)]
pub(super) struct Attachment {
    pub(super) gen: u64,
    kind: TransportKind,
    /// Tells the transport to close at once (superseded, heartbeat timeout).
    force: Option<oneshot::Sender<CloseCode>>,
    pub(super) last_seen: Instant,
    _guard: ConnGuard,
}

/// A transport opened as a probe of the session: it got its own `welcome` and carries nothing
/// else until the client sends `switch` on it; then it becomes the attachment.
#[derive(Debug)]
pub(super) struct ProbeAttachment {
    pub(super) gen: u64,
    kind: TransportKind,
    force: Option<oneshot::Sender<CloseCode>>,
    /// Frames for the probe alone (its `welcome`).
    pub(super) frames: Vec<OutFrame>,
    opened: Instant,
    guard: ConnGuard,
}

/// What an attached transport holds.
pub struct Attached {
    pub gen: u64,
    pub force_close: oneshot::Receiver<CloseCode>,
    /// The session's change version this transport has seen ([`Session::changed`]).
    pub seen: u64,
}

impl SessionState {
    pub fn attached_kind(&self) -> Option<TransportKind> {
        self.attachment.as_ref().map(|a| a.kind)
    }

    pub fn attached_gen(&self) -> Option<u64> {
        self.attachment.as_ref().map(|a| a.gen)
    }

    pub fn transport_last_seen(&self) -> Option<Instant> {
        self.attachment.as_ref().map(|a| a.last_seen)
    }

    /// True if no transport was attached since generation `gen`.
    pub fn attach_gen_is(&self, gen: u64) -> bool {
        self.attach_gen == gen
    }
}

impl Session {
    /// Attaches a transport. The old one, if any, is told to close with 4006. Undelivered
    /// frames are queued again behind `welcome` (which must be the first frame the client sees).
    pub fn attach(&self, kind: TransportKind, guard: ConnGuard, welcome: &ServerFrame) -> Attached {
        let (tx, rx) = oneshot::channel();
        let attached = self.update(|st, metrics| {
            if let Some(old) = st.attachment.take() {
                if let Some(force) = old.force {
                    let _ = force.send(CloseCode::SUPERSEDED);
                }
                if old.kind == TransportKind::Poll {
                    st.poll_close = Some(CloseCode::SUPERSEDED);
                }
            }
            if kind == TransportKind::Poll {
                st.poll_close = None;
            }
            st.last_gen += 1;
            st.attach_gen = st.last_gen;
            let now = Instant::now();
            st.attachment = Some(Attachment {
                gen: st.attach_gen,
                kind,
                force: Some(tx),
                last_seen: now,
                _guard: guard,
            });
            st.last_inbound = now;
            let pending: Vec<OutFrame> = st.outbox.frames.drain(..).collect();
            st.outbox.bytes = 0;
            st.outbox.closing = false;
            st.push_frame(welcome, metrics);
            for f in pending.into_iter().filter(|f| f.close.is_none()) {
                st.push(f.frame, metrics);
            }
            st.attach_gen
        });
        Attached {
            gen: attached,
            force_close: rx,
            // Transports take what is queued before they first wait, so a change between the
            // update above and this read is not missed.
            seen: self.version(),
        }
    }

    /// Opens a probe transport (see [`ProbeAttachment`]): `welcome` goes to it alone, the
    /// session stays on its transport. A previous probe is closed with 4006.
    pub fn open_probe(
        &self,
        kind: TransportKind,
        guard: ConnGuard,
        welcome: &ServerFrame,
    ) -> Attached {
        let (tx, rx) = oneshot::channel();
        let gen = self.update(|st, _| {
            if let Some(old) = st.probe.take() {
                if let Some(force) = old.force {
                    let _ = force.send(CloseCode::SUPERSEDED);
                }
            }
            st.last_gen += 1;
            let frame = encode_frame(welcome);
            st.probe = Some(Box::new(ProbeAttachment {
                gen: st.last_gen,
                kind,
                force: Some(tx),
                frames: vec![OutFrame {
                    seq: 0,
                    frame,
                    close: None,
                }],
                opened: Instant::now(),
                guard,
            }));
            st.last_gen
        });
        Attached {
            gen,
            force_close: rx,
            // Transports take what is queued before they first wait, so a change between the
            // update above and this read is not missed.
            seen: self.version(),
        }
    }

    /// `switch` arrived: the probe becomes the session's transport, the old one is told to close
    /// with 4006, and frames it did not deliver follow on the probe. False without a probe.
    pub fn commit_probe(&self) -> bool {
        self.update(|st, _| {
            let Some(probe) = st.probe.take() else {
                return false;
            };
            if let Some(old) = st.attachment.take() {
                if let Some(force) = old.force {
                    let _ = force.send(CloseCode::SUPERSEDED);
                }
                if old.kind == TransportKind::Poll {
                    st.poll_close = Some(CloseCode::SUPERSEDED);
                }
            }
            st.attach_gen = probe.gen;
            let now = Instant::now();
            st.attachment = Some(Attachment {
                gen: probe.gen,
                kind: probe.kind,
                force: probe.force,
                last_seen: now,
                _guard: probe.guard,
            });
            st.last_inbound = now;
            st.outbox.closing = false;
            st.outbox.frames.retain(|f| f.close.is_none());
            st.outbox.bytes = st.outbox.frames.iter().map(|f| f.frame.len()).sum();
            true
        })
    }

    /// Closes a probe that was not committed within `max_age` (its client is gone or never
    /// got the `welcome`).
    pub fn expire_probe(&self, max_age: std::time::Duration) {
        let mut st = self.state.lock();
        if st
            .probe
            .as_ref()
            .is_some_and(|p| p.opened.elapsed() > max_age)
        {
            if let Some(force) = st.probe.take().and_then(|p| p.force) {
                let _ = force.send(CloseCode::HEARTBEAT_TIMEOUT);
            }
        }
    }

    /// Detaches the transport `gen` if it is still the attached one. True if it was. (A probe
    /// that ends is simply forgotten: the session never moved to it.)
    pub fn detach(&self, gen: u64) -> bool {
        let mut st = self.state.lock();
        if st.probe.as_ref().is_some_and(|p| p.gen == gen) {
            st.probe = None;
            return false;
        }
        if st.attached_gen() != Some(gen) {
            return false;
        }
        if let Some(a) = st.attachment.take() {
            if a.kind == TransportKind::Poll && st.outbox.closing {
                // The poll client learns about its close from its next poll.
                st.poll_close = st.outbox.frames.back().and_then(|f| f.close);
            }
        }
        st.outbox.closing = false;
        st.outbox.frames.retain(|f| f.close.is_none());
        true
    }

    /// Closes the attached transport at once (without waiting for queued frames). Returns the
    /// detached generation.
    pub fn force_close(&self, code: CloseCode) -> Option<u64> {
        let gen = {
            let mut st = self.state.lock();
            if let Some(force) = st.probe.take().and_then(|p| p.force) {
                let _ = force.send(code);
            }
            let a = st.attachment.take()?;
            if let Some(force) = a.force {
                let _ = force.send(code);
            }
            if a.kind == TransportKind::Poll {
                st.poll_close = Some(code);
            }
            st.outbox.closing = false;
            st.outbox.frames.retain(|f| f.close.is_none());
            a.gen
        };
        self.wake();
        Some(gen)
    }
}
