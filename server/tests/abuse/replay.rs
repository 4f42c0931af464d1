//! Replays and presence snapshots in pages: a room full of large messages or of large
//! presence can be joined by a client that reads, over every transport, without tripping its
//! slow-consumer limit; a client that keeps asking for the same `since` gets it every time.

use std::collections::HashSet;

use rtlink_protocol::{ClientFrame, ServerFrame};

use crate::common::{Poll, Server};
use crate::process::ServerProcess;
use crate::{bounded, connect_ws, Attacker, Bystander, Peer, WAIT};

const BIG: usize = 60_000;
const MESSAGES: u64 = 80;

fn offsets(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect()
}

fn subscribe(room: &str, since: Option<u64>, history: Option<u32>) -> ClientFrame {
    ClientFrame::Subscribe {
        room: room.into(),
        since,
        epoch: None,
        history,
    }
}

/// Fills `room` with [`MESSAGES`] messages of [`BIG`] bytes (about 4.8 MB, over four times the
/// 1 MiB outbox of the servers below).
async fn fill(client: &Server, room: &str) {
    let mut publisher = connect_ws(client, &client.token("publisher")).await;
    publisher.subscribe(room, None).await;
    let payload = "m".repeat(BIG);
    for i in 0..MESSAGES {
        publisher.publish(room, &format!("p{i}"), &payload).await;
    }
}

#[tokio::test]
async fn abuse_a_room_full_of_large_messages_can_be_joined_and_replayed() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--outbox-max-bytes",
            "1048576",
            "--rate-per-sec",
            "1000",
            "--rate-burst",
            "1000",
            // This test is not about the per-user publish budget.
            "--publish-bytes-per-sec",
            "4000000000",
            "--publish-bytes-burst",
            "4000000000",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        fill(&client, "chat:big").await;

        // A WebSocket client replays everything, twice (the SDK resubscribes with the same
        // `since` after any reconnect: it must get through every time).
        for attempt in 0..2 {
            let joiner = Peer::spawn(connect_ws(&client, &client.token("joiner")).await);
            joiner.send(subscribe("chat:big", Some(0), None));
            joiner
                .wait_for(
                    "the whole replay",
                    |f| matches!(f, ServerFrame::Message { offset, .. } if *offset == MESSAGES),
                )
                .await;
            let got = joiner.frames();
            assert_eq!(
                offsets(&got),
                (1..=MESSAGES).collect::<Vec<_>>(),
                "attempt {attempt}: in order, no gap, no duplicate"
            );
            assert_eq!(joiner.closed(), None);
        }

        // `history: n` on a fresh subscribe is paged the same way.
        let recent = Peer::spawn(connect_ws(&client, &client.token("recent")).await);
        recent.send(subscribe("chat:big", None, Some(50)));
        recent
            .wait_for(
                "the newest 50",
                |f| matches!(f, ServerFrame::Message { offset, .. } if *offset == MESSAGES),
            )
            .await;
        assert_eq!(
            offsets(&recent.frames()),
            ((MESSAGES - 49)..=MESSAGES).collect::<Vec<_>>()
        );

        // Long polling: the replay waits for each poll's cursor to come back.
        let ticket = client.ticket("poller").await;
        let (mut poll, _) = Poll::open(&client, &ticket, None).await;
        assert_eq!(
            poll.send(&client, vec![subscribe("chat:big", Some(0), None)])
                .await,
            204
        );
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !offsets(&seen).contains(&MESSAGES) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "poll replay stalled"
            );
            let frames = poll.poll(&client).await;
            assert!(
                !frames
                    .iter()
                    .any(|f| matches!(f, ServerFrame::Close { .. })),
                "{frames:?}"
            );
            seen.extend(frames);
        }
        assert_eq!(offsets(&seen), (1..=MESSAGES).collect::<Vec<_>>());

        bystander.assert_unaffected(&client).await;
    })
    .await;
}

#[tokio::test]
async fn abuse_a_room_full_of_large_presence_can_be_joined() {
    bounded(async {
        const MEMBERS: usize = 150;
        // 152 connections from one address: above its default accept budget (a burst of 100,
        // then 50/s), which this test is not about, once joining got fast enough to open them
        // within a second.
        let server = ServerProcess::start(&[
            "--outbox-max-bytes",
            "131072",
            "--max-connections-per-ip",
            "1000",
            "--accept-burst-per-ip",
            "1000",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        // 150 members, each with 1 KiB of metadata: a one-frame snapshot would be 150 KB, over
        // the 128 KiB outbox of everyone who joins.
        let mut members = Vec::new();
        for i in 0..MEMBERS {
            let mut ws = connect_ws(&client, &client.token(&format!("m{i}"))).await;
            ws.subscribe("chat:lobby", None).await;
            let member = Peer::spawn(ws);
            member.send(ClientFrame::Presence {
                room: "chat:lobby".into(),
                meta: "x".repeat(1000),
            });
            members.push(member);
        }
        bystander
            .wait_for("the last member's metadata", |f| {
                let last = format!("m{}", MEMBERS - 1);
                match f {
                    ServerFrame::PresenceUpdate { conn, .. } => conn.user == last,
                    // Above 64 members, presence changes arrive coalesced.
                    ServerFrame::PresenceDiff { joins, .. } => {
                        joins.iter().any(|c| c.user == last && !c.meta.is_empty())
                    }
                    _ => false,
                }
            })
            .await;
        let joiner = Attacker::connect(&client, "joiner").await;
        joiner.send(subscribe("chat:lobby", None, None));
        let mut present = HashSet::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while present.len() < MEMBERS + 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} present",
                present.len()
            );
            assert_eq!(joiner.closed(), None);
            present.clear();
            for f in joiner.frames() {
                match f {
                    ServerFrame::PresenceSnapshot { conns, .. } => {
                        assert!(conns.len() < MEMBERS, "one frame for the whole presence");
                        present.extend(conns.into_iter().map(|c| c.user));
                    }
                    ServerFrame::PresenceJoin { conn, .. } => {
                        present.insert(conn.user);
                    }
                    ServerFrame::PresenceDiff { joins, .. } => {
                        present.extend(joins.into_iter().map(|c| c.user));
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(members.iter().all(|m| m.closed().is_none()));
        bystander.assert_unaffected(&client).await;
    })
    .await;
}
