//! Close codes of sessions that ended while their client may not have been told.
//!
//! A WebSocket client is told at once how its session ended: a close frame on the one connection
//! that carries both directions. The others may miss it, and once the session is gone their next
//! request would get `404 unknown_session` (or, for an open, a new session), which means "start
//! a new session": wrong after `4013 disconnected`, which means "stop" (a logout or ban from the
//! server API). A long-polling client between two polls has no open request to be told on; an SSE
//! client's `POST /v1/send` may cross the close on its stream; a client whose connection was down
//! (a detached session, any transport) is told nothing, which matters when the close was terminal.
//! So the hub remembers how such a session ended, for the longer of the resume window (a detached
//! client may come back that late) and a poll deadline (the silence after which a poll client
//! counts as gone), and answers in kind: a poll gets a batch holding the close, a send is taken
//! and dropped (the close reaches the client on its downstream), and an open that resumes a
//! session ended for good gets the close.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtlink_protocol::CloseCode;

/// Resume token → (user, close code), each kept for `keep` after the session ended. Bounded by
/// the sessions that end within `keep` (each held a session slot until then).
pub struct EndedSessions {
    keep: Duration,
    codes: HashMap<String, Ended>,
    /// The same tokens, oldest first, with when they are forgotten.
    expiries: VecDeque<(Instant, String)>,
}

impl EndedSessions {
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            codes: HashMap::new(),
            expiries: VecDeque::new(),
        }
    }

    /// The session of `token`, `user`'s, ended with `code` at `now`.
    pub fn insert(&mut self, token: &str, user: &str, code: CloseCode, now: Instant) {
        self.forget_expired(now);
        let ended = Ended {
            user: user.to_owned(),
            code,
        };
        if self.codes.insert(token.to_owned(), ended).is_none() {
            self.expiries.push_back((now + self.keep, token.to_owned()));
        }
    }

    /// How the session of `token` ended, if it ended less than `keep` ago.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<&Ended> {
        self.forget_expired(now);
        self.codes.get(token)
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.expiries.front() {
            if *expiry > now {
                break;
            }
            if let Some((_, token)) = self.expiries.pop_front() {
                self.codes.remove(&token);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

/// How a remembered session ended, and whose it was.
pub struct Ended {
    pub user: String,
    pub code: CloseCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_kept_for_the_window_then_forgotten() {
        let start = Instant::now();
        let keep = Duration::from_secs(30);
        let mut ended = EndedSessions::new(keep);
        ended.insert("a", "ana", CloseCode::DISCONNECTED, start);
        ended.insert(
            "b",
            "bob",
            CloseCode::NORMAL,
            start + Duration::from_secs(10),
        );
        let code = |e: Option<&Ended>| e.map(|e| (e.user.clone(), e.code));
        assert_eq!(
            code(ended.get("a", start + Duration::from_secs(29))),
            Some(("ana".to_owned(), CloseCode::DISCONNECTED))
        );
        assert!(ended.get("unknown", start).is_none());
        assert!(ended.get("a", start + keep).is_none());
        assert_eq!(
            code(ended.get("b", start + keep)),
            Some(("bob".to_owned(), CloseCode::NORMAL))
        );
        assert_eq!(ended.len(), 1);
        assert!(ended.get("b", start + Duration::from_secs(40)).is_none());
        assert!(ended.is_empty());
    }
}
