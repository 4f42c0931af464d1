//! Unsafe by default: a forgotten flag fails closed.

use crate::process::ServerProcess;
use crate::{bounded, Bystander};

#[test]
fn abuse_no_secret_and_no_demo_refuses_to_start() {
    let (status, stderr) = ServerProcess::run_to_exit(&[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--auth-secret") && stderr.contains("--demo-auth"),
        "{stderr}"
    );
    let (status, stderr) = ServerProcess::run_to_exit(&["--auth-secret", "short-secret"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
}

#[tokio::test]
async fn abuse_demo_endpoints_refuse_foreign_origins() {
    bounded(async {
        // The demo, as `make demo` runs it: no allowlist at all.
        let server = ServerProcess::start_raw(&["--demo-auth"]);
        let client = server.client();
        let demo_token = |origin: Option<&'static str>| {
            let mut req = client
                .http
                .post(client.url("/v1/demo-token"))
                .body(r#"{"name":"Ana"}"#);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            req.send()
        };
        // Its own pages (same origin) get a token; so does a non-browser (no Origin).
        let same = format!("http://{}", server.addr);
        let resp = client
            .http
            .post(client.url("/v1/demo-token"))
            .header("origin", &same)
            .body(r#"{"name":"Ana"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let token = token_of(resp).await;
        let resp = demo_token(None).await.unwrap();
        assert_eq!(resp.status(), 200);
        let newcomer = token_of(resp).await;
        assert_eq!(
            demo_token(Some("https://evil.example"))
                .await
                .unwrap()
                .status(),
            403
        );

        // A bystander using the demo while a foreign page tries to drain the server.
        let mut bystander = Bystander::join_with(&client, &token, newcomer, "chat:lobby").await;
        for _ in 0..3 {
            let resp = client
                .http
                .post(client.url("/v1/demo/drain"))
                .header("origin", "https://evil.example")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 403);
        }
        let health = client
            .http
            .get(client.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "not draining");
        bystander.assert_unaffected(&client).await;
    })
    .await;
}

#[tokio::test]
async fn abuse_demo_tokens_do_not_work_on_a_production_server_with_the_same_secret() {
    bounded(async {
        let demo = ServerProcess::start(&["--demo-auth"]);
        let production = ServerProcess::start(&[]);
        let demo_client = demo.client();
        let resp = demo_client
            .http
            .post(demo_client.url("/v1/demo-token"))
            .body(r#"{"name":"Mallory"}"#)
            .send()
            .await
            .unwrap();
        let token = token_of(resp).await;
        // Good on the demo server...
        demo_client.ticket_with(&token).await;
        // ...refused by the production server that shares the secret.
        let prod = production.client();
        let mut bystander = Bystander::join(&prod, "alice", "chat:lobby").await;
        let resp = prod
            .http
            .post(prod.url("/v1/ticket"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        bystander.assert_unaffected(&prod).await;
    })
    .await;
}

async fn token_of(resp: reqwest::Response) -> String {
    resp.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}
