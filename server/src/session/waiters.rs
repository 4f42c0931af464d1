//! Who waits for a session's next change ([`super::Session::changed`]).

use std::task::Waker;

/// The tasks waiting for a session's next change. Nearly always one (the transport's writer),
/// kept inline so registering and waking it allocate nothing.
#[derive(Default)]
pub(super) struct Waiters {
    first: Option<Waker>,
    more: Vec<Waker>,
}

impl Waiters {
    pub(super) fn register(&mut self, waker: &Waker) {
        match &mut self.first {
            None => self.first = Some(waker.clone()),
            Some(w) if w.will_wake(waker) => {}
            Some(_) => {
                if !self.more.iter().any(|w| w.will_wake(waker)) {
                    self.more.push(waker.clone());
                }
            }
        }
    }

    pub(super) fn wake_all(self) {
        if let Some(w) = self.first {
            w.wake();
        }
        for w in self.more {
            w.wake();
        }
    }
}
