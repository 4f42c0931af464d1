//! The ticket step: `POST /v1/ticket` with the bearer token, as its own abortable request, so the
//! core sees its answer (admission is decided here, where `fetch` can see `429`/`503`) before it
//! picks the transport to open with the ticket.

use alloc::boxed::Box;
use alloc::string::String;

use web_sys::AbortController;

use super::http::{self, OpenFailure};
use super::status::signal;

/// A ticket request in flight; dropping it aborts the request (and nothing is reported).
pub(crate) struct TicketFetch {
    abort: Option<AbortController>,
}

impl TicketFetch {
    /// Starts the request; `done` runs from a promise reaction unless the fetch was dropped. (If
    /// the browser cannot make an `AbortController`, nothing starts and the core's deadline for
    /// the ticket step reports the server unreachable.)
    pub(crate) fn start(
        base_url: &str,
        token: &str,
        resume: Option<&str>,
        probe: bool,
        done: Box<dyn FnOnce(Result<String, OpenFailure>)>,
    ) -> Self {
        let abort = AbortController::new().ok();
        if let Some(a) = &abort {
            let sig = signal(a);
            http::ticket(base_url, token, resume, probe, &sig.clone(), Box::new(move |result| {
                if crate::wasm::get(&sig, "aborted").as_bool() != Some(true) {
                    done(result);
                }
            }));
        }
        Self { abort }
    }
}

impl Drop for TicketFetch {
    fn drop(&mut self) {
        if let Some(a) = &self.abort {
            a.abort();
        }
    }
}
