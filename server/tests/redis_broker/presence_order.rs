//! Presence snapshots list connections in the order of their last change, the order the
//! room's events told the members, on every node: from a mirror that followed the events, a
//! mirror filled later, a plain read, across a Pub/Sub outage and with entries of older nodes.

use super::*;

/// What a member's client does with the events it gets after its snapshot: a join or update
/// moves the connection to the end (the latest change), a leave removes it.
fn apply_in_order(view: &mut Vec<PresenceConn>, kind: &RoomEventKind) -> Option<String> {
    match kind {
        RoomEventKind::PresenceJoin(c) | RoomEventKind::PresenceUpdate(c) => {
            view.retain(|o| o.session != c.session);
            view.push(c.clone());
            Some(c.session.clone())
        }
        RoomEventKind::PresenceLeave { session, .. } => {
            view.retain(|o| o.session != *session);
            Some(session.clone())
        }
        _ => None,
    }
}

/// Two tabs of one user with different metadata, the older one changed last. A member that
/// followed the events shows the user by that change (clients show a user's latest
/// connection); a joiner applies a snapshot, so every node's snapshot must list the
/// connections in the order they last changed: from a mirror that followed the events, from a
/// mirror filled from the hash later, and from a plain read of the hash. An entry written by a
/// node of an older version (no change number) sorts first.
#[tokio::test]
async fn snapshots_list_connections_in_the_order_they_last_changed() {
    bounded(async {
        let server = RedisServer::start();
        let o = opts();
        let (a, b) = two_nodes(&server, o.clone()).await;
        let c = RedisBroker::connect(&server.url(), o.clone())
            .await
            .expect("node c");
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        settle_mirror(&b, &mut rx, "r").await;
        let mut member = conns(b.presence_snapshot("r").await.expect("snapshot"));
        assert!(member.is_empty());
        a.presence_join("r", conn("s-a", "ana", ""))
            .await
            .expect("join");
        b.presence_join("r", conn("s-m", "bob", ""))
            .await
            .expect("join");
        a.presence_join("r", conn("s-z", "ana", ""))
            .await
            .expect("join");
        assert!(a
            .presence_update("r", conn("s-z", "ana", "typing"))
            .await
            .expect("update"));
        assert!(a
            .presence_update("r", conn("s-a", "ana", "away"))
            .await
            .expect("update"));
        loop {
            let ev = next(&mut rx, "r").await;
            apply_in_order(&mut member, &ev.kind);
            if matches!(&ev.kind, RoomEventKind::PresenceUpdate(c) if c.meta == "away") {
                break;
            }
        }
        let want = vec![
            conn("s-m", "bob", ""),
            conn("s-z", "ana", "typing"),
            conn("s-a", "ana", "away"),
        ];
        assert_eq!(member, want, "the events' order");
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            want,
            "b's mirror, which followed the events"
        );
        let mut rx_c = c.events();
        c.watch("r").await.expect("watch");
        assert_eq!(
            conns(c.presence_snapshot("r").await.expect("snapshot")),
            want,
            "c, filled from the hash"
        );
        settle_mirror(&c, &mut rx_c, "r").await;
        assert_eq!(
            conns(c.presence_snapshot("r").await.expect("snapshot")),
            want,
            "c's mirror"
        );
        assert_eq!(
            conns(a.presence_snapshot("r").await.expect("read")),
            want,
            "a, which reads the hash"
        );
        // A rejoin (a resumed session) is a change too.
        a.presence_join("r", conn("s-z", "ana", "typing"))
            .await
            .expect("rejoin");
        loop {
            let ev = next(&mut rx, "r").await;
            if apply_in_order(&mut member, &ev.kind).as_deref() == Some("s-z") {
                break;
            }
        }
        let want = vec![
            conn("s-m", "bob", ""),
            conn("s-a", "ana", "away"),
            conn("s-z", "ana", "typing"),
        ];
        assert_eq!(member, want);
        assert_eq!(conns(a.presence_snapshot("r").await.expect("read")), want);
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            want
        );
        // A rolling deploy: an entry from a node without change numbers sorts first.
        let client = redis::Client::open(server.url()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let old = r#"{"session":"s-old","user":"cy","name":"cy","meta":"","node":"n"}"#;
        let _: i64 = redis::cmd("HSET")
            .arg(format!("{}:pres:r", o.key_prefix))
            .arg("s-old")
            .arg(old)
            .query_async(&mut admin)
            .await
            .expect("HSET");
        let read = conns(a.presence_snapshot("r").await.expect("read"));
        assert_eq!(read.len(), 4);
        assert_eq!(read[0].session, "s-old");
        assert_eq!(read[1..], want[..]);
    })
    .await;
}

/// A member's view keeps the order of the changes across a Pub/Sub outage during which the
/// older of two tabs changed (recovered as a diff against the mirror, or live).
#[tokio::test]
async fn change_order_survives_a_pubsub_outage() {
    bounded(async {
        let server = RedisServer::start();
        let (a, b) = two_nodes(&server, opts()).await;
        let mut rx = b.events();
        b.watch("r").await.expect("watch");
        for s in ["s-a", "s-b", "s-z"] {
            a.presence_join("r", conn(s, "ana", ""))
                .await
                .expect("join");
        }
        settle_mirror(&b, &mut rx, "r").await;
        let mut member = conns(b.presence_snapshot("r").await.expect("snapshot"));
        let client = redis::Client::open(server.url()).expect("client");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection");
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut admin)
            .await
            .expect("client kill");
        assert!(a
            .presence_update("r", conn("s-a", "ana", "away"))
            .await
            .expect("update"));
        assert!(a
            .presence_update("r", conn("s-b", "ana", "")) // the same value: still a change
            .await
            .expect("update"));
        a.presence_join("r", conn("s-n", "ana", "new"))
            .await
            .expect("join");
        let truth = conns(a.presence_snapshot("r").await.expect("read"));
        assert_eq!(
            truth.iter().map(|c| c.session.as_str()).collect::<Vec<_>>(),
            ["s-z", "s-a", "s-b", "s-n"]
        );
        while let Some(ev) = next_in(&mut rx, "r", Duration::from_secs(2)).await {
            apply_in_order(&mut member, &ev.kind);
            if member == truth {
                break;
            }
        }
        assert_eq!(member, truth, "the member's view");
        settle_mirror(&b, &mut rx, "r").await;
        assert_eq!(
            conns(b.presence_snapshot("r").await.expect("snapshot")),
            truth,
            "b's mirror after the outage"
        );
    })
    .await;
}
