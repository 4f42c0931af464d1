//! Close codes of long-poll sessions that ended between two polls.
//!
//! A WebSocket or SSE client is told at once how its session ended (a close frame on the open
//! connection). A long-polling client between two polls has no open request to be told on, and
//! once the session is gone its next poll would get `404 unknown_session`, which means "start a
//! new session": wrong after `4013 disconnected`, which means "stop" (a logout or ban from the
//! server API). So the hub remembers the close code of a session that ended while long polling
//! for one poll deadline (the silence after which a poll client counts as gone anyway), and that
//! client's next poll gets a batch holding the close instead.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtlink_protocol::CloseCode;

/// Resume token → close code, each kept for `keep` after the session ended. Bounded by the
/// sessions that end within `keep` (each held a session slot until then).
pub struct EndedPolls {
    keep: Duration,
    codes: HashMap<String, CloseCode>,
    /// The same tokens, oldest first, with when they are forgotten.
    expiries: VecDeque<(Instant, String)>,
}

impl EndedPolls {
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            codes: HashMap::new(),
            expiries: VecDeque::new(),
        }
    }

    /// The long-poll session of `token` ended with `code` at `now`.
    pub fn insert(&mut self, token: &str, code: CloseCode, now: Instant) {
        self.forget_expired(now);
        if self.codes.insert(token.to_owned(), code).is_none() {
            self.expiries.push_back((now + self.keep, token.to_owned()));
        }
    }

    /// How the long-poll session of `token` ended, if it ended less than `keep` ago.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<CloseCode> {
        self.forget_expired(now);
        self.codes.get(token).copied()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_kept_for_the_window_then_forgotten() {
        let start = Instant::now();
        let keep = Duration::from_secs(30);
        let mut ended = EndedPolls::new(keep);
        ended.insert("a", CloseCode::DISCONNECTED, start);
        ended.insert("b", CloseCode::NORMAL, start + Duration::from_secs(10));
        assert_eq!(
            ended.get("a", start + Duration::from_secs(29)),
            Some(CloseCode::DISCONNECTED)
        );
        assert_eq!(ended.get("unknown", start), None);
        assert_eq!(ended.get("a", start + keep), None);
        assert_eq!(ended.get("b", start + keep), Some(CloseCode::NORMAL));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended.get("b", start + Duration::from_secs(40)), None);
        assert!(ended.is_empty());
    }
}
