//! Did every subscriber get every acknowledged message exactly once, in order?

use std::collections::HashMap;
use std::fmt;

use crate::client::Delivered;

/// The delivery figures of one subscriber against what the publisher had acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Acknowledged messages the subscriber should have.
    pub expected: usize,
    /// Distinct acknowledged messages it got.
    pub delivered: usize,
    /// Acknowledged messages it never got, with no `resync` to say so.
    pub lost: usize,
    /// Acknowledged messages it never got, after an explicit `resync` (history truly gone).
    pub lost_with_resync: usize,
    /// Extra deliveries of a message it already had.
    pub duplicated: usize,
    /// Deliveries that came before a message published earlier.
    pub reordered: usize,
    /// Messages delivered that were never acknowledged (e.g. stored, but the ack was lost and
    /// the publish reported failed).
    pub unacknowledged: usize,
}

impl Tally {
    /// Nothing lost without a resync, nothing duplicated or reordered.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} delivered, lost {}, lost after resync {}, duplicated {}, reordered {}, unacknowledged {}",
            self.delivered,
            self.expected,
            self.lost,
            self.lost_with_resync,
            self.duplicated,
            self.reordered,
            self.unacknowledged
        )
    }
}

/// Compares `delivered` (in delivery order) with `published`: the payloads the publisher got
/// an ack for, in publish order. `resynced` says the subscriber was told history was lost.
pub fn tally(published: &[String], delivered: &[Delivered], resynced: bool) -> Tally {
    let rank: HashMap<&str, usize> = published.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut t = Tally { expected: published.len(), ..Tally::default() };
    let mut last_rank = None;
    for d in delivered {
        let n = seen.entry(d.payload.as_str()).or_insert(0);
        *n += 1;
        if *n > 1 {
            t.duplicated += 1;
            continue;
        }
        match rank.get(d.payload.as_str()) {
            Some(&r) => {
                t.delivered += 1;
                if last_rank.is_some_and(|last| r < last) {
                    t.reordered += 1;
                }
                last_rank = Some(last_rank.map_or(r, |last: usize| last.max(r)));
            }
            None => t.unacknowledged += 1,
        }
    }
    let missing = t.expected - t.delivered;
    if resynced {
        t.lost_with_resync = missing;
    } else {
        t.lost = missing;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(payloads: &[&str]) -> Vec<Delivered> {
        let at = std::time::Instant::now();
        payloads.iter().enumerate().map(|(i, p)| Delivered { offset: i as u64 + 1, payload: (*p).into(), at }).collect()
    }

    #[test]
    fn counts_each_kind_of_failure() {
        let published: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert!(tally(&published, &d(&["a", "b", "c", "d"]), false).is_clean());
        let t = tally(&published, &d(&["a", "c", "b", "b", "x"]), false);
        assert_eq!((t.lost, t.duplicated, t.reordered, t.unacknowledged), (1, 1, 1, 1));
        let t = tally(&published, &d(&["c", "d"]), true);
        assert_eq!((t.lost, t.lost_with_resync), (0, 2));
        assert!(t.is_clean());
    }
}
