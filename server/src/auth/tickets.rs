//! Tickets: single-use, short-lived stand-ins for a token, for the transports that cannot send
//! an `Authorization` header. They are kept in the broker, so a ticket issued by one node is
//! redeemed on any other (a load balancer without stickiness sends `POST /v1/ticket` and the
//! transport open to different nodes): in memory on a single node, in Redis on a cluster. A
//! ticket may also name the session its transport continues (the `POST /v1/ticket` body), so
//! resume tokens never travel in a URL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{random_token, Auth, Claims};
use crate::broker::tickets::TicketGrant;
use crate::broker::Broker;

pub use crate::broker::tickets::TicketRefusal as StoreRefusal;

/// Live (issued, not yet used or expired) tickets one user may hold. A client needs one per
/// connection attempt and uses it within moments; the cap stops one token from filling the
/// store that every user shares.
pub const MAX_TICKETS_PER_USER: u32 = 64;

/// Random bytes in a ticket (32 URL-safe characters).
const TICKET_BYTES: usize = 24;

/// Why no ticket was issued.
#[derive(Debug, PartialEq, Eq)]
pub enum TicketRefusal {
    /// This user holds [`MAX_TICKETS_PER_USER`] unused tickets (429).
    TooManyForUser,
    /// The in-memory table is full of live tickets (503).
    TableFull,
    /// The broker could not be reached (503).
    Unavailable,
}

/// Why a ticket did not admit anyone.
#[derive(Debug, PartialEq, Eq)]
pub enum RedeemError {
    /// Missing, unknown, expired, already used, or its token expired (401).
    Invalid,
    /// The broker could not be reached (503): the ticket may still be good.
    Unavailable,
}

/// What a ticket grants: who, and which session the transport opened with it continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub claims: Claims,
    /// The resume token of the session to continue (from the ticket request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Open the transport as a probe of that session (it moves only on `switch`).
    #[serde(default)]
    pub probe: bool,
}

impl Auth {
    /// Issues a single-use ticket for already verified claims, unless the user already holds
    /// too many unused ones or the store is full.
    pub async fn issue_ticket(
        &self,
        broker: &dyn Broker,
        claims: Claims,
    ) -> Result<(String, Duration), TicketRefusal> {
        let grant = Grant {
            claims,
            resume: None,
            probe: false,
        };
        self.issue_grant(broker, grant).await
    }

    /// [`Auth::issue_ticket`] for a ticket that may also name a session to continue.
    pub async fn issue_grant(
        &self,
        broker: &dyn Broker,
        grant: Grant,
    ) -> Result<(String, Duration), TicketRefusal> {
        let ticket = random_token(TICKET_BYTES);
        let user = grant.claims.sub.clone();
        let payload = serde_json::to_string(&grant).map_err(|_| TicketRefusal::Unavailable)?;
        let stored = TicketGrant {
            ticket: ticket.clone(),
            user,
            payload,
            ttl: self.ticket_ttl,
            per_user_cap: MAX_TICKETS_PER_USER,
        };
        match broker.issue_ticket(stored).await {
            Ok(Ok(())) => Ok((ticket, self.ticket_ttl)),
            Ok(Err(StoreRefusal::TooManyForUser)) => Err(TicketRefusal::TooManyForUser),
            Ok(Err(StoreRefusal::TableFull)) => Err(TicketRefusal::TableFull),
            Err(e) => {
                tracing::warn!(error = %e, "ticket not stored");
                Err(TicketRefusal::Unavailable)
            }
        }
    }

    /// Consumes a ticket: the claims if it exists, has not expired and the token inside has
    /// not expired either. A ticket works once, on whichever node redeems it first.
    pub async fn redeem_ticket(
        &self,
        broker: &dyn Broker,
        ticket: &str,
    ) -> Result<Claims, RedeemError> {
        self.redeem(broker, ticket).await.map(|g| g.claims)
    }

    /// [`Auth::redeem_ticket`], with the session the ticket names.
    pub async fn redeem(&self, broker: &dyn Broker, ticket: &str) -> Result<Grant, RedeemError> {
        // Anything longer is not one of ours; it never reaches the store.
        if ticket.is_empty() || ticket.len() > 64 {
            return Err(RedeemError::Invalid);
        }
        let payload = match broker.redeem_ticket(ticket).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(RedeemError::Invalid),
            Err(e) => {
                tracing::warn!(error = %e, "ticket store unreachable");
                return Err(RedeemError::Unavailable);
            }
        };
        let grant: Grant = serde_json::from_str(&payload).map_err(|_| RedeemError::Invalid)?;
        if grant.claims.expired() {
            return Err(RedeemError::Invalid);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::local::{LocalBroker, LocalBrokerConfig};
    use crate::broker::now_ms;

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

    #[tokio::test]
    async fn tickets_are_single_use() {
        let (a, b) = (auth(), LocalBroker::new(LocalBrokerConfig::default()));
        let Ok((t, _)) = a.issue_ticket(&b, claims(now_ms() / 1000 + 60)).await else {
            panic!("ticket refused")
        };
        assert!(a.redeem_ticket(&b, &t).await.is_ok());
        assert_eq!(a.redeem_ticket(&b, &t).await, Err(RedeemError::Invalid));
        assert_eq!(
            a.redeem_ticket(&b, "forged").await,
            Err(RedeemError::Invalid)
        );
        assert_eq!(
            a.redeem_ticket(&b, &"x".repeat(65)).await,
            Err(RedeemError::Invalid)
        );
    }

    #[tokio::test]
    async fn a_ticket_whose_token_expired_admits_nobody() {
        let (a, b) = (auth(), LocalBroker::new(LocalBrokerConfig::default()));
        let Ok((t, _)) = a.issue_ticket(&b, claims(now_ms() / 1000)).await else {
            panic!("ticket refused")
        };
        assert_eq!(a.redeem_ticket(&b, &t).await, Err(RedeemError::Invalid));
    }

    #[tokio::test]
    async fn one_user_cannot_fill_the_ticket_table() {
        let (a, b) = (auth(), LocalBroker::new(LocalBrokerConfig::default()));
        let exp = now_ms() / 1000 + 60;
        let mut held = Vec::new();
        for _ in 0..MAX_TICKETS_PER_USER {
            held.push(
                a.issue_ticket(&b, claims(exp))
                    .await
                    .map(|(t, _)| t)
                    .expect("under the cap"),
            );
        }
        assert_eq!(
            a.issue_ticket(&b, claims(exp)).await.map(|_| ()),
            Err(TicketRefusal::TooManyForUser)
        );
        let other = Claims {
            sub: "someone-else".into(),
            ..claims(exp)
        };
        assert!(
            a.issue_ticket(&b, other).await.is_ok(),
            "other users are not affected"
        );
        assert!(a.redeem_ticket(&b, &held[0]).await.is_ok());
        assert!(
            a.issue_ticket(&b, claims(exp)).await.is_ok(),
            "using a ticket frees a slot"
        );
    }
}
