//! Presence authority for this node's sessions: per connection (session), per room.
//!
//! The table itself lives behind the broker. This file decides *when* a session is present:
//! from its first subscribe until it unsubscribes, closes, or stays without transport for the
//! presence grace period. A session that reattaches after the grace period rejoins with its
//! last metadata; one that reattaches within it never left (no flap).

use std::sync::Arc;

use rtlink_protocol::ErrorCode;

use crate::hub::Hub;
use crate::rooms::Flow;
use crate::session::Session;

impl Hub {
    /// `presence {room, meta}` from the client.
    pub(crate) async fn set_presence(
        self: &Arc<Self>,
        session: &Arc<Session>,
        room: String,
        meta: String,
    ) -> Flow {
        let max = self.config.max_presence_meta_bytes;
        if meta.len() > max {
            self.metrics
                .count_drop(crate::metrics::DropReason::TooLarge);
            let reason = format!("presence metadata is at most {max} bytes");
            self.nack(session, room, ErrorCode::TooLarge, &reason);
            return Ok(());
        }
        if !self.admit_room_op(session, &room, &room)? {
            return Ok(());
        }
        if !self.config.presence_on(&room) {
            self.nack(
                session,
                room,
                ErrorCode::Forbidden,
                "presence is off in this room",
            );
            return Ok(());
        }
        session.update(|st, _| {
            if let Some(sub) = st.rooms.get_mut(&room) {
                sub.meta = meta.clone();
            }
        });
        let conn = self.presence_conn(session, meta);
        let result = match self.broker.presence_update(&room, conn.clone()).await {
            Ok(true) => Ok(()),
            Ok(false) => self.broker.presence_join(&room, conn).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "presence update failed");
            self.nack(session, room, ErrorCode::Internal, "presence unavailable");
        }
        Ok(())
    }

    /// Removes the session from the presence of every room it is in. With `grace_expired`, the
    /// session stays subscribed and rejoins when a transport attaches again; this only happens
    /// if it is still detached.
    pub(crate) async fn leave_presence_all(
        self: &Arc<Self>,
        session: &Arc<Session>,
        grace_expired: bool,
    ) {
        let _serial = session.presence_lock.lock().await;
        let rooms: Vec<(String, bool)> = {
            let mut st = session.lock();
            if grace_expired {
                if st.attached_kind().is_some() {
                    return;
                }
                st.presence_left = true;
            }
            st.rooms
                .iter_mut()
                .map(|(room, sub)| {
                    let was_typing = std::mem::take(&mut sub.typing_active);
                    sub.typing_gen += 1;
                    (room.clone(), was_typing)
                })
                .collect()
        };
        for (room, was_typing) in rooms {
            if was_typing {
                let _ = self
                    .broker
                    .typing(&room, &session.claims.sub, &session.claims.name(), false)
                    .await;
            }
            if let Err(e) = self.broker.presence_leave(&room, &session.id).await {
                tracing::warn!(error = %e, "presence leave failed");
            }
        }
    }

    /// Puts a resumed session back into the presence of its rooms (after the grace ran out).
    pub(crate) async fn rejoin_presence(self: &Arc<Self>, session: &Arc<Session>) {
        let _serial = session.presence_lock.lock().await;
        let rooms: Vec<(String, String)> = session
            .lock()
            .rooms
            .iter()
            .map(|(r, sub)| (r.clone(), sub.meta.clone()))
            .collect();
        for (room, meta) in rooms {
            if !self.config.presence_on(&room) {
                continue;
            }
            let conn = self.presence_conn(session, meta);
            if let Err(e) = self.broker.presence_join(&room, conn).await {
                tracing::warn!(error = %e, "presence rejoin failed");
            }
        }
    }
}
