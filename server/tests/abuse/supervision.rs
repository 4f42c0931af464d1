//! The hub's dispatcher is supervised: if it panics, fan-out resumes (restarted, logged) and the
//! events it missed are replayed, instead of every room on the node going silent.

use rtlink_protocol::{ClientFrame, ServerFrame};

use crate::process::{eventually, ServerProcess};
use crate::{bounded, metric, Attacker, Bystander, WAIT};

/// The debug build's test hook makes the dispatcher panic on the first event of `chat:boom`
/// (the hook is compiled out of release builds). Afterwards the room that triggered it gets its
/// message by replay, and the bystander's room is served as before.
#[tokio::test]
async fn abuse_a_panicking_dispatcher_is_restarted_and_nothing_is_lost() {
    bounded(async {
        let server =
            ServerProcess::start_with_env(&[], &[("RTLINK_TEST_PANIC_DISPATCH_ROOM", "chat:boom")]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut listener = crate::connect_ws(&client, &client.token("bob")).await;
        listener.subscribe("chat:boom", None).await;
        let listener = crate::Peer::spawn(listener);
        let mut attacker = crate::connect_ws(&client, &client.token("mallory")).await;
        attacker.subscribe("chat:boom", None).await;
        let attacker = Attacker::spawn(attacker);
        attacker.send(ClientFrame::Publish {
            room: "chat:boom".into(),
            id: "trigger".into(),
            payload: "the event the dispatcher panics on".into(),
        });
        attacker
            .wait_for("the ack of the trigger", |f| {
                matches!(f, ServerFrame::Ack { id, .. } if id == "trigger")
            })
            .await;
        eventually("the panic to be logged", WAIT, || async {
            server.logged("background task panicked; restarting it")
        })
        .await;
        // Replayed after the restart: the event the dispatcher panicked on is not lost.
        listener
            .wait_for("the trigger message", |f| {
                matches!(f, ServerFrame::Message { payload, .. } if payload.starts_with("the event"))
            })
            .await;
        // Live fan-out works again, in the bystander's room and in the one that panicked.
        bystander.assert_unaffected(&client).await;
        attacker.send(ClientFrame::Publish {
            room: "chat:boom".into(),
            id: "after".into(),
            payload: "after the restart".into(),
        });
        listener
            .wait_for("a live message after the restart", |f| {
                matches!(f, ServerFrame::Message { payload, .. } if payload == "after the restart")
            })
            .await;
        assert_eq!(listener.closed(), None);
        assert_eq!(metric(&client, "rtlink_task_restarts_total").await, 1);
    })
    .await;
}
