//! API keys of the server API: who may call it. Keys come from `--api-key` (repeatable) and
//! `--api-key-file`; only their SHA-256 digests are kept, and a presented key is compared with
//! every digest in constant time, so neither timing nor the key's length tells how close a
//! guess was. Keys are never logged: [`ApiKey`]'s `Debug` prints nothing of it.

use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::limits::PublishBudget;

/// Shortest key accepted: a guessable key would open publishing to every room.
pub const MIN_KEY_LEN: usize = 16;

/// An API key from the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.trim();
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "API keys must be at least {MIN_KEY_LEN} characters"
            ));
        }
        Ok(Self(key.to_owned()))
    }
}

/// The configured keys, as digests, and each key's publish budget (keyed by the key's index).
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    budget: PublishBudget,
}

impl Default for ApiKeys {
    fn default() -> Self {
        Self {
            digests: Vec::new(),
            budget: PublishBudget::new(0, 0),
        }
    }
}

impl ApiKeys {
    /// The keys of `--api-key` and of `--api-key-file`.
    pub fn load(keys: &[ApiKey], file: Option<&Path>) -> anyhow::Result<Self> {
        let mut all: Vec<ApiKey> = keys.to_vec();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--api-key-file: cannot read {}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let key = line.parse::<ApiKey>().map_err(|e| {
                    anyhow::anyhow!("--api-key-file {} line {}: {e}", path.display(), n + 1)
                })?;
                all.push(key);
            }
        }
        Ok(Self {
            digests: all.iter().map(|k| digest(&k.0)).collect(),
            ..Self::default()
        })
    }

    /// Sets the publish budget of every key: `bytes_per_sec` payload bytes per second on this
    /// node, with a burst of `burst` (raised to `min_burst`, the largest request body, so any
    /// valid request can pass).
    pub fn with_publish_budget(mut self, bytes_per_sec: u32, burst: u32, min_burst: u32) -> Self {
        self.budget = PublishBudget::new(bytes_per_sec, burst.max(min_burst));
        self
    }

    /// Charges `bytes` of payload to key `key` (an index from [`ApiKeys::find`]); over its
    /// budget, nothing is charged and the answer is how long until it would pass.
    pub fn charge(
        &self,
        key: usize,
        bytes: usize,
        now: std::time::Instant,
    ) -> Result<(), Option<std::time::Duration>> {
        self.budget.charge_or_wait(&key.to_string(), bytes, now)
    }

    /// Forgets the budgets of keys that have not published for a while (periodic sweep).
    pub fn sweep(&self, now: std::time::Instant) {
        self.budget.sweep(now);
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// True if `presented` is one of the keys.
    pub fn check(&self, presented: &str) -> bool {
        self.find(presented).is_some()
    }

    /// Which key `presented` is (its index), if any. Looks at every key whatever matches.
    pub fn find(&self, presented: &str) -> Option<usize> {
        let d = digest(presented);
        // 0: none; i + 1: key i.
        let mut found = 0u64;
        for (i, key) in self.digests.iter().enumerate() {
            found = u64::conditional_select(&found, &(i as u64 + 1), key.ct_eq(&d));
        }
        usize::try_from(found).ok()?.checked_sub(1)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly_and_short_ones_are_refused() {
        let a: ApiKey = "k-0123456789abcdef".parse().expect("long enough");
        let keys = ApiKeys::load(&[a], None).expect("no file");
        assert!(keys.check("k-0123456789abcdef"));
        assert!(!keys.check("k-0123456789abcde"));
        assert!(!keys.check(""));
        assert!("short".parse::<ApiKey>().is_err());
        assert!(!format!("{:?}", "k-0123456789abcdef".parse::<ApiKey>()).contains("0123"));
        assert!(ApiKeys::default().is_empty() && !ApiKeys::default().check("anything"));
    }

    #[test]
    fn key_file_lines() {
        let path = std::env::temp_dir().join(format!("rtlink-keys-{:x}", rand::random::<u64>()));
        std::fs::write(
            &path,
            "# backends\n\n  key-one-0123456789  \nkey-two-0123456789\n",
        )
        .expect("temp file");
        let keys = ApiKeys::load(&[], Some(&path)).expect("valid file");
        assert_eq!(keys.len(), 2);
        assert!(keys.check("key-one-0123456789") && keys.check("key-two-0123456789"));
        assert_eq!(keys.find("key-two-0123456789"), Some(1));
        assert_eq!(keys.find("key-three-0123456789"), None);
        std::fs::write(&path, "tooshort\n").expect("temp file");
        assert!(ApiKeys::load(&[], Some(&path)).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
