//! Large rooms: presence changes coalesced into `presence_diff` above the member threshold, and
//! rooms that opt out of presence (`--presence-off`). Real server, real WebSockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rtlink_protocol::{ClientFrame, ErrorCode, ServerFrame};

/// Applies presence frames to a set of session ids, as a client does.
fn apply(present: &mut BTreeSet<String>, frame: &ServerFrame) {
    match frame {
        ServerFrame::PresenceSnapshot { conns, .. } => {
            present.clear();
            present.extend(conns.iter().map(|c| c.session.clone()));
        }
        ServerFrame::PresenceJoin { conn, .. } => {
            present.insert(conn.session.clone());
        }
        ServerFrame::PresenceLeave { session, .. } => {
            present.remove(session);
        }
        ServerFrame::PresenceDiff { joins, leaves, .. } => {
            for l in leaves {
                present.remove(&l.session);
            }
            present.extend(joins.iter().map(|c| c.session.clone()));
        }
        _ => {}
    }
}

#[tokio::test]
async fn joins_into_a_large_room_arrive_as_coalesced_diffs() {
    let mut config = fast_config();
    config.presence_batch = Duration::from_millis(100);
    config.presence_batch_min_members = 3;
    let s = start(config).await;
    let mut watcher = s.ws("watcher").await;
    watcher.subscribe("big", None).await;
    let mut others = Vec::new();
    let mut sessions = BTreeSet::from([session_id(watcher.welcome())]);
    for i in 0..6 {
        let mut ws = s.ws(&format!("u{i}")).await;
        sessions.insert(session_id(ws.welcome()));
        ws.subscribe("big", None).await;
        others.push(ws);
    }
    // One member leaves for good: its leave travels in a diff too.
    let mut leaver = others.pop().unwrap();
    let leaver_session = session_id(leaver.welcome());
    leaver
        .send(&ClientFrame::Close {
            code: rtlink_protocol::CloseCode::NORMAL,
            reason: String::new(),
        })
        .await;
    sessions.remove(&leaver_session);

    let mut present = BTreeSet::new();
    let (mut joins, mut diffs) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while present != sessions {
        let frame = tokio::time::timeout_at(deadline, watcher.recv())
            .await
            .unwrap_or_else(|_| panic!("presence never converged: {present:?} vs {sessions:?}"));
        match &frame {
            ServerFrame::PresenceJoin { .. } => joins += 1,
            ServerFrame::PresenceDiff { joins, leaves, .. } => {
                diffs += 1;
                let mut seen = BTreeSet::new();
                for id in joins
                    .iter()
                    .map(|c| &c.session)
                    .chain(leaves.iter().map(|l| &l.session))
                {
                    assert!(seen.insert(id.clone()), "a session twice in one diff");
                }
            }
            _ => {}
        }
        apply(&mut present, &frame);
    }
    // The first joins come one by one (the room is small), the rest coalesced.
    assert!(joins < 6, "every join came alone ({joins})");
    assert!((1..5).contains(&diffs), "{diffs} diffs for 4 changes");
}

#[tokio::test]
async fn a_room_without_presence_sends_none_and_refuses_presence() {
    let mut config = fast_config();
    config.presence_off = vec!["audience:*".into()];
    let s = start(config).await;
    let mut a = s.ws("ana").await;
    a.subscribe("audience:1", None).await;
    let mut b = s.ws("bob").await;
    b.subscribe("audience:1", None).await;
    b.send(&ClientFrame::Presence {
        room: "audience:1".into(),
        meta: "{}".into(),
    })
    .await;
    let nack = b
        .recv_until(|f| matches!(f, ServerFrame::Nack { .. }))
        .await;
    assert!(
        matches!(
            nack,
            ServerFrame::Nack {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{nack:?}"
    );
    // Messages still flow, and ana saw no presence of bob at all.
    b.publish("audience:1", "m1", "\"hi\"").await;
    let mut seen = Vec::new();
    loop {
        let f = a.recv().await;
        if matches!(f, ServerFrame::Message { .. }) {
            break;
        }
        seen.push(f);
    }
    for f in &seen {
        match f {
            ServerFrame::PresenceSnapshot { conns, .. } => assert!(conns.is_empty()),
            ServerFrame::PresenceJoin { .. }
            | ServerFrame::PresenceDiff { .. }
            | ServerFrame::PresenceUpdate { .. } => {
                panic!("presence in a room without presence: {f:?}")
            }
            _ => {}
        }
    }
    // Another room keeps presence.
    a.subscribe("chat", None).await;
    let mut c = s.ws("cy").await;
    c.subscribe("chat", None).await;
    a.recv_until(|f| matches!(f, ServerFrame::PresenceJoin { conn, .. } if conn.user == "cy"))
        .await;
}

/// A presence larger than one snapshot page reaches a joiner as the snapshot and a few
/// `presence_diff` pages, not as one `presence_join` per member that did not fit: joining a room
/// of N members costs the joiner O(N / page) frames, and the room O(N² / page) instead of O(N²).
#[tokio::test]
async fn a_large_presence_reaches_a_joiner_in_pages() {
    const MEMBERS: usize = 60;
    let mut config = fast_config();
    // Live changes one by one: any `presence_diff` the joiner gets is a snapshot page.
    config.presence_batch_min_members = 10_000;
    let s = start(config).await;
    let mut members = Vec::new();
    let mut sessions = BTreeSet::new();
    for i in 0..MEMBERS {
        let mut ws = s.ws(&format!("m{i}")).await;
        sessions.insert(session_id(ws.welcome()));
        ws.subscribe("lobby", None).await;
        ws.send(&ClientFrame::Presence {
            room: "lobby".into(),
            meta: "x".repeat(1000),
        })
        .await;
        // Frames of a session are handled in order: the pong says the metadata is stored.
        ws.send(&ClientFrame::Ping).await;
        ws.recv_until(|f| matches!(f, ServerFrame::Pong)).await;
        members.push(ws);
    }
    let mut joiner = s.ws("joiner").await;
    sessions.insert(session_id(joiner.welcome()));
    joiner
        .send(&ClientFrame::Subscribe {
            room: "lobby".into(),
            since: None,
            epoch: None,
            history: None,
        })
        .await;
    let mut present = BTreeSet::new();
    let (mut snapshot_size, mut pages, mut joins) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while present != sessions {
        let frame = tokio::time::timeout_at(deadline, joiner.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "presence never complete: {} of {}",
                    present.len(),
                    sessions.len()
                )
            });
        match &frame {
            ServerFrame::PresenceSnapshot { conns, .. } => snapshot_size = conns.len(),
            ServerFrame::PresenceDiff { joins, leaves, .. } => {
                assert!(leaves.is_empty(), "a snapshot page with leaves");
                assert!(!joins.is_empty(), "an empty snapshot page");
                pages += 1;
            }
            ServerFrame::PresenceJoin { conn, .. }
                if conn.session != session_id(joiner.welcome()) =>
            {
                joins += 1
            }
            _ => {}
        }
        apply(&mut present, &frame);
    }
    // About 60 KB of presence: the snapshot holds about 32 KB of it, one or two pages the rest.
    assert!(
        snapshot_size > 0 && snapshot_size < MEMBERS,
        "snapshot of {snapshot_size}"
    );
    assert!((1..=2).contains(&pages), "{pages} pages");
    assert_eq!(joins, 0, "members that did not fit came one frame each");
}
