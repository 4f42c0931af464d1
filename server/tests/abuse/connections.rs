//! Connection-level protection: tickets, header timeouts, connection caps, frame sizes, stalled
//! streams.

use rtlink_protocol::envelope::TicketResponse;

use crate::common::{Poll, Server, Sse, Ws};
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
        // SSE and long polling with an unsupported protocol version: refused with a `close
        // 4002` in the stream or batch (what a browser can see).
        for path in ["/v1/sse", "/v1/poll"] {
            let resp = client
                .http
                .get(client.url(&format!("{path}?ticket={ticket}&v=2")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let body = resp.text().await.unwrap();
            assert!(body.contains(r#""code":4002"#), "{path}: {body}");
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

/// Gets a ticket and opens an SSE stream, both claiming to come from `forwarded_for`; the
/// response (kept open) or the refusal's status (at the ticket step or at the open).
async fn sse_from(client: &Server, forwarded_for: &str) -> Result<reqwest::Response, u16> {
    let resp = client
        .http
        .post(client.url("/v1/ticket"))
        .bearer_auth(client.token("mallory"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let ticket = resp.json::<TicketResponse>().await.unwrap().ticket;
    let resp = client
        .http
        .get(client.url(&format!("/v1/sse?ticket={ticket}&v=1")))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        200 => Ok(resp),
        status => Err(status),
    }
}

/// Behind a trusted proxy the per-address limits key on the forwarded client, so one client
/// behind the balancer cannot use up the balancer's address for everyone; from an untrusted
/// peer the header is ignored, so it cannot be used to dodge the limits.
#[tokio::test]
async fn abuse_per_address_limits_see_through_trusted_proxies_only() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--trusted-proxy",
            "127.0.0.1",
            "--max-connections-per-ip",
            "2",
        ]);
        let client = server.client();
        // The bystander comes through the proxy without a forwarding header: 127.0.0.1.
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(sse_from(&client, "6.6.6.6").await.expect("within the cap"));
        }
        assert_eq!(sse_from(&client, "6.6.6.6").await.err(), Some(429));
        // A spoofed left part does not help: the proxy appended the real client.
        assert_eq!(sse_from(&client, "1.2.3.4, 6.6.6.6").await.err(), Some(429));
        // Another client behind the same proxy is not affected.
        held.push(sse_from(&client, "7.7.7.7").await.expect("another client"));
        bystander.assert_unaffected(&client).await;
        drop(held);

        // Without --trusted-proxy the header is ignored: spoofing does not add slots.
        let server = ServerProcess::start(&["--max-connections-per-ip", "4"]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let mut held = Vec::new();
        for i in 0.. {
            match sse_from(&client, &format!("9.9.9.{i}")).await {
                Ok(r) => held.push(r),
                Err(status) => {
                    assert_eq!(status, 429);
                    break;
                }
            }
        }
        assert_eq!(held.len(), 3, "four per address, the bystander holds one");
        drop(held);
        crate::process::eventually("the slots are released", crate::WAIT, || async {
            let m = client
                .http
                .get(client.url("/metrics"))
                .send()
                .await
                .unwrap();
            m.text()
                .await
                .unwrap()
                .contains("rtlink_connections{transport=\"sse\"} 0")
        })
        .await;
        bystander.assert_unaffected(&client).await;
    })
    .await;
}
