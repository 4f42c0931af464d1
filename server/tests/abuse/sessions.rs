//! Sessions outlive their transport for the resume window: one user or one address must not
//! fill every session slot, detached sessions included.

use rtlink_protocol::{ClientFrame, ServerFrame};

use crate::common::{resume_token, resumed, Server, Ws, WsEvent};
use crate::process::ServerProcess;
use crate::{bounded, connect_ws, Bystander};

/// Opens a WebSocket session for `token`; `Err(close code)` if the server refused it after
/// `hello`.
async fn try_session(
    client: &Server,
    token: &str,
    resume: Option<&str>,
) -> Result<Ws, Option<u16>> {
    let ticket = client.ticket_with(token).await;
    let mut ws = Ws::connect(&client.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Hello {
        v: 1,
        resume: resume.map(Into::into),
    })
    .await;
    match ws.next_event().await {
        WsEvent::Frame(welcome @ ServerFrame::Welcome { .. }) => {
            ws.welcome = Some(welcome);
            Ok(ws)
        }
        WsEvent::Frame(other) => panic!("{other:?}"),
        WsEvent::Closed(code) => Err(code),
    }
}

#[tokio::test]
async fn abuse_one_user_cannot_hold_every_session() {
    bounded(async {
        let server = ServerProcess::start(&["--max-sessions-per-user", "3"]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let token = client.token("mallory");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                try_session(&client, &token, None)
                    .await
                    .expect("under the cap"),
            );
        }
        // Every one attached: the fourth is refused with 1013 (try again later).
        assert_eq!(
            try_session(&client, &token, None).await.err(),
            Some(Some(1013))
        );
        // A transport drops: its session is detached (resumable)...
        let dropped = held.remove(0);
        let old_token = resume_token(dropped.welcome());
        drop(dropped);
        // ...and a new session of the same user takes the place of that oldest detached one,
        // which can no longer be resumed.
        held.push(open_when_slot(&client, &token, None).await);
        // The evicted session cannot be resumed: asking for it (once another transport of the
        // user dropped, so there is room) opens a new session.
        drop(held.remove(0));
        let again = open_when_slot(&client, &token, Some(&old_token)).await;
        assert!(!resumed(again.welcome()), "the evicted session is gone");
        // Other users are not affected at all.
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

/// Opens a session once the server has seen one of the user's transports drop (until then
/// every session is attached and a new one is refused with 1013).
async fn open_when_slot(client: &Server, token: &str, resume: Option<&str>) -> Ws {
    let deadline = tokio::time::Instant::now() + crate::WAIT;
    loop {
        match try_session(client, token, resume).await {
            Ok(ws) => return ws,
            Err(code) => assert_eq!(code, Some(1013)),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slot after a detach"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn abuse_one_address_cannot_hold_every_session() {
    bounded(async {
        let server =
            ServerProcess::start(&["--trusted-proxy", "127.0.0.1", "--max-sessions-per-ip", "5"]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        // Many users from one address open SSE sessions and walk away: the sessions stay
        // (resumable) without any open connection.
        let mut opened = 0;
        for i in 0..20 {
            let ticket = client.ticket_with(&client.token(&format!("u{i}"))).await;
            let resp = client
                .http
                .get(client.url(&format!("/v1/sse?ticket={ticket}&v=1")))
                .header("x-forwarded-for", "6.6.6.6")
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                200 => opened += 1,
                429 => {
                    assert!(resp.headers().contains_key("retry-after"));
                    break;
                }
                other => panic!("{other}"),
            }
            drop(resp);
        }
        assert_eq!(opened, 5);
        // Other addresses (here the proxy's own) are unaffected.
        let _ = connect_ws(&client, &client.token("bob")).await;
        bystander.assert_unaffected(&client).await;
    })
    .await;
}
