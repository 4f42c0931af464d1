//! Authentication: HS256 JWTs (signed and checked by hand with `hmac` + `sha2`) and the
//! short-lived single-use tickets a browser trades a token for, because WebSocket and
//! EventSource cannot carry an `Authorization` header.
//!
//! Tickets and tokens are secrets: nothing here logs them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::broker::now_ms;

type HmacSha256 = Hmac<Sha256>;

/// Tickets held at most; past it the oldest expired ones go first, then new tickets are refused.
const MAX_TICKETS: usize = 100_000;
/// Live (issued, not yet used or expired) tickets one user may hold. A client needs one per
/// connection attempt and uses it within moments; the cap stops one token from filling the
/// table that every user shares.
const MAX_TICKETS_PER_USER: u32 = 64;

/// The claims of an rtlink token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Room patterns; `*` matches any run of characters.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    pub fn may_access(&self, room: &str) -> bool {
        self.rooms.iter().any(|p| pattern_matches(p, room))
    }

    pub fn expired(&self) -> bool {
        self.exp.saturating_mul(1000) <= now_ms()
    }
}

/// Glob match where `*` matches any run of characters (including none).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    // Iterative wildcard match with backtracking to the last star: O(|p|·|t|) worst case.
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Malformed,
    BadSignature,
    Expired,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "token is not a valid HS256 JWT",
            Self::BadSignature => "token signature does not verify",
            Self::Expired => "token expired",
        })
    }
}

pub struct Auth {
    secret: Vec<u8>,
    ticket_ttl: Duration,
    tickets: Mutex<Tickets>,
}

/// Live tickets, and how many each user holds.
#[derive(Default)]
struct Tickets {
    by_ticket: HashMap<String, (Claims, Instant)>,
    per_user: HashMap<String, u32>,
}

impl Tickets {
    fn forget_user_ticket(per_user: &mut HashMap<String, u32>, user: &str) {
        if let Some(n) = per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(user);
            }
        }
    }

    fn remove(&mut self, ticket: &str) -> Option<(Claims, Instant)> {
        let entry = self.by_ticket.remove(ticket)?;
        Self::forget_user_ticket(&mut self.per_user, &entry.0.sub);
        Some(entry)
    }

    fn sweep(&mut self, now: Instant) {
        let per_user = &mut self.per_user;
        self.by_ticket.retain(|_, (claims, exp)| {
            let live = *exp > now;
            if !live {
                Self::forget_user_ticket(per_user, &claims.sub);
            }
            live
        });
    }
}

/// Why no ticket was issued.
#[derive(Debug, PartialEq, Eq)]
pub enum TicketRefusal {
    /// This user holds [`MAX_TICKETS_PER_USER`] unused tickets (429).
    TooManyForUser,
    /// The shared table is full of live tickets (503).
    TableFull,
}

impl Auth {
    pub fn new(secret: Vec<u8>, ticket_ttl: Duration) -> Self {
        Self {
            secret,
            ticket_ttl,
            tickets: Mutex::new(Tickets::default()),
        }
    }

    fn mac(&self) -> HmacSha256 {
        #[allow(clippy::expect_used)]
        HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }

    /// Signs claims into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Checks a JWT's algorithm, signature (constant time) and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or(AuthError::Malformed)?;
        if header.alg != "HS256" {
            return Err(AuthError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| AuthError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(b.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(b)
            .ok()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or(AuthError::Malformed)?;
        if claims.expired() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }

    /// A token for anyone, for the demo (rooms `*`, one hour).
    pub fn demo_token(&self, name: &str) -> String {
        let id = format!("demo-{}", random_token(6));
        let claims = Claims {
            sub: id,
            name: name.chars().take(64).collect(),
            rooms: vec!["*".into()],
            exp: now_ms() / 1000 + 3600,
        };
        self.sign(&claims)
    }

    /// Issues a single-use ticket for already verified claims, unless the user already holds
    /// too many unused ones or the shared table is full of live tickets.
    pub fn issue_ticket(&self, claims: Claims) -> Result<(String, Duration), TicketRefusal> {
        let now = Instant::now();
        let mut tickets = self.tickets.lock();
        let held = |t: &Tickets| t.per_user.get(&claims.sub).copied().unwrap_or(0);
        if held(&tickets) >= MAX_TICKETS_PER_USER || tickets.by_ticket.len() >= MAX_TICKETS {
            tickets.sweep(now);
            if held(&tickets) >= MAX_TICKETS_PER_USER {
                return Err(TicketRefusal::TooManyForUser);
            }
            if tickets.by_ticket.len() >= MAX_TICKETS {
                return Err(TicketRefusal::TableFull);
            }
        }
        let ticket = random_token(24);
        *tickets.per_user.entry(claims.sub.clone()).or_default() += 1;
        tickets
            .by_ticket
            .insert(ticket.clone(), (claims, now + self.ticket_ttl));
        Ok((ticket, self.ticket_ttl))
    }

    /// Consumes a ticket: the claims if it exists, has not expired and the token inside has
    /// not expired either. A ticket works once.
    pub fn redeem_ticket(&self, ticket: &str) -> Option<Claims> {
        let (claims, exp) = self.tickets.lock().remove(ticket)?;
        (exp > Instant::now() && !claims.expired()).then_some(claims)
    }

    /// Forgets expired tickets (periodic sweep).
    pub fn sweep(&self) {
        self.tickets.lock().sweep(Instant::now());
    }
}

/// A random URL-safe secret of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(b"k".to_vec(), Duration::from_secs(30))
    }

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u".into(),
            name: "U".into(),
            rooms: vec!["chat:*".into()],
            exp,
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("chat:*", "chat:lobby"));
        assert!(pattern_matches("chat:*", "chat:"));
        assert!(!pattern_matches("chat:*", "dm:x"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exactly"));
    }

    #[test]
    fn sign_verify_round_trip_and_forgery() {
        let a = auth();
        let c = claims(now_ms() / 1000 + 60);
        let t = a.sign(&c);
        assert_eq!(a.verify(&t), Ok(c.clone()));
        let other = Auth::new(b"other".to_vec(), Duration::from_secs(30));
        assert_eq!(other.verify(&t), Err(AuthError::BadSignature));
        assert_eq!(a.verify("a.b"), Err(AuthError::Malformed));
        assert_eq!(a.verify(&a.sign(&claims(1))), Err(AuthError::Expired));
    }

    #[test]
    fn tickets_are_single_use() {
        let a = auth();
        let Ok((t, _)) = a.issue_ticket(claims(now_ms() / 1000 + 60)) else {
            panic!("ticket refused")
        };
        assert!(a.redeem_ticket(&t).is_some());
        assert!(a.redeem_ticket(&t).is_none());
        assert!(a.redeem_ticket("forged").is_none());
    }

    #[test]
    fn one_user_cannot_fill_the_ticket_table() {
        let a = auth();
        let exp = now_ms() / 1000 + 60;
        let mut held = Vec::new();
        for _ in 0..MAX_TICKETS_PER_USER {
            held.push(
                a.issue_ticket(claims(exp))
                    .map(|(t, _)| t)
                    .expect("under the cap"),
            );
        }
        assert_eq!(
            a.issue_ticket(claims(exp)).map(|_| ()),
            Err(TicketRefusal::TooManyForUser)
        );
        let other = Claims {
            sub: "someone-else".into(),
            ..claims(exp)
        };
        assert!(
            a.issue_ticket(other).is_ok(),
            "other users are not affected"
        );
        assert!(a.redeem_ticket(&held[0]).is_some());
        assert!(
            a.issue_ticket(claims(exp)).is_ok(),
            "using a ticket frees a slot"
        );
    }
}
