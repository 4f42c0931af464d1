//! The write side of a session's WebSocket transport as routing and the writer see it: direct
//! writes to an idle plain-TCP socket, the writer's batches, control frames, the write window.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{OutFrame, Session, SessionState};
use crate::broker::Frame;
use crate::write_window::{Coalescing, WriteWindow};
use crate::ws_wire::DirectSocket;

/// The write side of a WebSocket transport of this session, as routing sees it
/// (transport::websocket, crate::ws_wire).
#[derive(Debug)]
pub(super) struct WsWire {
    /// The transport's generation: direct writes only while it is the attached one.
    pub(super) gen: u64,
    /// Plain TCP: a frame pushed while the outbox is empty and the writer idle is written to the
    /// socket at once, from the task that pushed it (no wake-up of the writer).
    pub(super) direct: Option<DirectSocket>,
    /// The writer took frames (or control bytes) and has not come back for more with nothing
    /// left: nothing may be written around it. Cleared by its first empty take.
    pub(super) busy: bool,
    /// A frame a direct write put on the wire only in part (the socket took no more), and how
    /// many of its bytes (header included) went: the writer finishes it before anything else,
    /// a close frame included. Like frames the writer took, it is no longer in the outbox.
    pub(super) partial: Option<(Frame, usize)>,
    /// Control frames tungstenite's reader wants sent (pong, the close reply), already framed.
    control: Vec<u8>,
    /// Write coalescing (`--write-window`): direct writes and the writer's batches both count.
    pub(super) window: WriteWindow,
    /// The reader ended (the peer closed or went away): the writer writes what is queued at
    /// once, window or not, then stops ([`Session::finish_ws`]).
    finishing: bool,
}

/// What the WebSocket writer is to do next ([`Session::take_ws_batch`]).
#[derive(Debug)]
pub enum WsTake {
    /// Its transport is neither attached nor the probe any more.
    Gone,
    /// Something is queued but the connection wrote less than its write window ago: come back
    /// at this instant (nothing was taken).
    Hold(tokio::time::Instant),
    /// Write what was taken (possibly nothing), after the rest of this frame a direct write
    /// left unfinished, if any.
    Write(Option<(Frame, usize)>),
}

impl SessionState {
    /// Starts the write side of WebSocket transport `gen` (attached or a probe): control frames
    /// can be queued for it, and with `direct`, frames can be written straight to its socket.
    /// The write side of the attached WebSocket is never replaced by another one's (a probe
    /// beside it then has none: its pongs are dropped). `coalescing`: the server's write windows.
    pub fn set_ws_wire(
        &mut self,
        gen: u64,
        direct: Option<DirectSocket>,
        coalescing: Arc<Coalescing>,
    ) {
        let attached = self.attached_gen();
        if self.ws.as_ref().is_some_and(|w| attached == Some(w.gen)) {
            return;
        }
        self.ws = Some(Box::new(WsWire {
            gen,
            direct,
            busy: false,
            partial: None,
            control: Vec::new(),
            window: WriteWindow::new(coalescing),
            finishing: false,
        }));
    }

    /// Forgets the write side of WebSocket transport `gen` (it ended), closing its socket's
    /// last shared handle.
    pub fn clear_ws_wire(&mut self, gen: u64) {
        if self.ws.as_ref().is_some_and(|w| w.gen == gen) {
            self.ws = None;
        }
    }
}

impl Session {
    /// Queues already framed WebSocket control bytes for transport `gen` and wakes its writer.
    /// Dropped if `gen` is no longer the write side's transport.
    pub fn queue_ws_control(&self, gen: u64, bytes: &[u8]) {
        self.update(|st, _| {
            if let Some(w) = st.ws.as_deref_mut().filter(|w| w.gen == gen) {
                w.control.extend_from_slice(bytes);
            }
        });
    }

    /// For the WebSocket writer of `gen`, at `now`: moves every queued frame into `frames` and
    /// the pending control bytes into `control`, and hands over a frame a direct write left
    /// unfinished (write its rest first). Taking nothing marks the writer idle (direct writes
    /// may go ahead); taking something marks it busy until then, and starts a write window.
    /// Something queued within the window is left where it is: [`WsTake::Hold`].
    pub fn take_ws_batch(
        &self,
        gen: u64,
        now: tokio::time::Instant,
        frames: &mut VecDeque<OutFrame>,
        control: &mut Vec<u8>,
    ) -> WsTake {
        let (partial, replay_blocked) = {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            let is_probe = st.probe.as_ref().is_some_and(|p| p.gen == gen);
            if !is_probe && st.attached_gen() != Some(gen) {
                return WsTake::Gone;
            }
            if let Some(w) = st.ws.as_deref().filter(|w| w.gen == gen) {
                let queued = !w.control.is_empty()
                    || w.partial.is_some()
                    || match &st.probe {
                        Some(p) if is_probe => !p.frames.is_empty(),
                        _ => !st.outbox.frames.is_empty(),
                    };
                if let Some(until) = w.window.hold_until(now).filter(|_| queued) {
                    if !w.finishing {
                        return WsTake::Hold(until);
                    }
                }
                if w.finishing && !queued {
                    return WsTake::Gone;
                }
            }
            let blocked = if let Some(probe) = st.probe.as_mut().filter(|_| is_probe) {
                frames.extend(probe.frames.drain(..));
                false
            } else {
                st.outbox.bytes = 0;
                if frames.is_empty() {
                    // The outbox's buffer goes to the writer, which frees it after writing: an
                    // idle session keeps no queue capacity.
                    *frames = std::mem::take(&mut st.outbox.frames);
                } else {
                    frames.extend(st.outbox.frames.drain(..));
                }
                !frames.is_empty() && std::mem::take(&mut st.replay_blocked)
            };
            let mut partial = None;
            if let Some(w) = st.ws.as_deref_mut().filter(|w| w.gen == gen) {
                std::mem::swap(control, &mut w.control);
                partial = w.partial.take();
                w.busy = partial.is_some() || !frames.is_empty() || !control.is_empty();
                if w.busy {
                    w.window.wrote(now);
                }
            }
            (partial, blocked)
        };
        if replay_blocked {
            self.drained.notify_waiters();
        }
        WsTake::Write(partial)
    }

    /// The reader of WebSocket transport `gen` ended: its writer is to write what is queued
    /// now (frames its write window holds, the close reply) and then stop
    /// ([`WsTake::Gone`]).
    pub fn finish_ws(&self, gen: u64) {
        self.update(|st, _| {
            if let Some(w) = st.ws.as_deref_mut().filter(|w| w.gen == gen) {
                w.finishing = true;
            }
        });
    }

    /// For the WebSocket writer of `gen` about to send a close frame after its transport was
    /// detached: the frame a direct write left unfinished, to finish first.
    pub fn take_ws_unfinished(&self, gen: u64) -> Option<(Frame, usize)> {
        let mut st = self.state.lock();
        st.ws
            .as_deref_mut()
            .filter(|w| w.gen == gen)?
            .partial
            .take()
    }

    /// Starts the write side of WebSocket transport `gen` (see [`SessionState::set_ws_wire`]).
    pub fn set_ws_wire(&self, gen: u64, direct: Option<DirectSocket>, coalescing: Arc<Coalescing>) {
        self.state.lock().set_ws_wire(gen, direct, coalescing);
    }

    /// Ends the write side of WebSocket transport `gen` (see [`SessionState::clear_ws_wire`]).
    pub fn clear_ws_wire(&self, gen: u64) {
        self.state.lock().clear_ws_wire(gen);
    }
}
