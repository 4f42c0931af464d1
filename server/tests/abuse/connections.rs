//! Connection-level protection: tickets, header timeouts, connection caps, frame sizes, stalled
//! streams.

use crate::common::{Poll, Sse, Ws};
use crate::process::ServerProcess;
use crate::{bounded, Bystander};

/// Opens refused for a reason other than the ticket (wrong protocol version, not an upgrade)
/// leave the ticket usable: it is consumed last.
#[tokio::test]
async fn abuse_refused_opens_do_not_burn_the_ticket() {
    bounded(async {
        let server = ServerProcess::start(&[]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;

        let ticket = client.ticket("bob").await;
        // A plain GET of the WebSocket endpoint (no upgrade headers).
        let resp = client
            .http
            .get(client.url(&format!("/v1/ws?ticket={ticket}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        // SSE and long polling with an unsupported protocol version.
        for path in ["/v1/sse", "/v1/poll"] {
            let resp = client
                .http
                .get(client.url(&format!("{path}?ticket={ticket}&v=2")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{path}");
        }
        // The ticket still opens a WebSocket, once.
        let url = client.ws_url(&format!("/v1/ws?ticket={ticket}"));
        assert!(Ws::try_connect(&url, None).await.is_ok());
        assert_eq!(Ws::try_connect(&url, None).await.err(), Some(401));

        // The same for SSE and polling.
        let ticket = client.ticket("bob").await;
        let _ = client
            .http
            .get(client.url(&format!("/v1/sse?ticket={ticket}&v=2")))
            .send()
            .await
            .unwrap();
        let mut sse = Sse::open(&client, &format!("ticket={ticket}&v=1"))
            .await
            .unwrap_or_else(|r| panic!("{}", r.status()));
        assert!(sse.next().await.is_some());
        let ticket = client.ticket("bob").await;
        let _ = client
            .http
            .get(client.url(&format!("/v1/poll?ticket={ticket}&v=2")))
            .send()
            .await
            .unwrap();
        let (_poll, frames) = Poll::open(&client, &ticket, None).await;
        assert!(!frames.is_empty());

        bystander.assert_unaffected(&client).await;
    })
    .await;
}
