//! Graceful drain (SIGTERM, Ctrl-C, or `POST /v1/demo/drain` in demo mode).
//!
//! `/healthz` turns 503 and new transports get 503; every attached session is sent
//! `reconnect_after {min_ms: 0, max_ms: drain_window}` followed by a close 4008, so clients
//! spread their reconnects over the window. The drain then waits (at most `drain_grace`) for
//! the transports to close and cuts the remaining ones.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use rtlink_protocol::{CloseCode, ServerFrame};
use tokio::time::Instant;

use crate::app::AppState;

impl AppState {
    /// Drains: after it returns, no transport is open and new ones are refused. Sessions are
    /// kept (a node that keeps running can still resume them).
    pub async fn drain(&self) {
        if self.draining.swap(true, SeqCst) {
            tracing::info!("drain already in progress");
        }
        let window = self.config.drain_window.as_millis() as u64;
        let sessions = self.hub.all_sessions();
        tracing::info!(sessions = sessions.len(), window_ms = window, "draining");
        for s in &sessions {
            if s.lock().attached_kind().is_none() {
                continue;
            }
            s.push_frame(&ServerFrame::ReconnectAfter {
                min_ms: 0,
                max_ms: window,
            });
            s.close_transport(CloseCode::SERVER_DRAINING, "server draining");
        }
        let deadline = Instant::now() + self.config.drain_grace;
        while self.limiter.total() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for s in &sessions {
            self.hub.force_close(s, CloseCode::SERVER_DRAINING);
        }
        tracing::info!(left_open = self.limiter.total(), "drain finished");
    }

    /// Drains, then accepts connections again (the demo's "drain server" button).
    pub async fn drain_then_resume(&self) {
        self.drain().await;
        self.draining.store(false, SeqCst);
        tracing::info!("drain finished; accepting connections again");
    }
}
