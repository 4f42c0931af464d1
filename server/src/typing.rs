//! Typing relay: ephemeral, never stored. A start that is not followed by a stop within the
//! typing TTL is ended by the server, which relays `active: false` itself. The timer runs on
//! the node that holds the session; the event goes through the broker like any other.

use std::sync::Arc;

use crate::hub::Hub;
use crate::rooms::Flow;
use crate::session::Session;

impl Hub {
    /// `typing {room, active}` from the client.
    pub(crate) async fn typing(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: String,
        active: bool,
    ) -> Flow {
        if !self.admit_room_op(session, &room, &room)? {
            return Ok(());
        }
        let gen = session.update(|st, _| {
            st.rooms.get_mut(&room).map(|sub| {
                sub.typing_gen = sub.typing_gen.wrapping_add(1);
                sub.typing_active = active;
                sub.typing_gen
            })
        });
        let Some(gen) = gen else { return Ok(()) };
        let (user, name) = (&session.claims.sub, &session.claims.name());
        if let Err(e) = self.broker.typing(&room, user, name, active).await {
            tracing::warn!(error = %e, "typing relay failed");
        }
        if active {
            let hub = Arc::downgrade(self);
            let session = session.clone();
            let ttl = self.config.typing_ttl;
            tokio::spawn(async move {
                tokio::time::sleep(ttl).await;
                let expired = session.update(|st, _| match st.rooms.get_mut(&room) {
                    Some(sub) if sub.typing_gen == gen && sub.typing_active => {
                        sub.typing_active = false;
                        true
                    }
                    _ => false,
                });
                let Some(hub) = hub.upgrade() else { return };
                if expired {
                    let (user, name) = (&session.claims.sub, &session.claims.name());
                    let _ = hub.broker.typing(&room, user, name, false).await;
                }
            });
        }
        Ok(())
    }
}
