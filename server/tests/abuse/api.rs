//! The server API's publish is under a byte budget per API key: a leaked or runaway key can
//! flood no faster than its budget, and another key (and every client) is unaffected.

use serde_json::{json, Value};

use crate::process::ServerProcess;
use crate::{bounded, Bystander};

const KEY: &str = "attacker-key-0123456789";
const OTHER_KEY: &str = "bystander-key-0123456789";
/// 100 payloads of 60,000 bytes (60,002 as JSON text): about 6 MB per batch.
const PAYLOAD: usize = 60_000;

async fn publish(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn batch(room: &str, tag: &str) -> Value {
    let payload = "x".repeat(PAYLOAD);
    let messages: Vec<Value> = (0..100)
        .map(|i| json!({"room": room, "payload": payload, "id": format!("{tag}-{i}")}))
        .collect();
    json!({ "messages": messages })
}

/// One key publishes 6 MB batches: the first fits the 8 MiB burst, the second is refused
/// `429 rate_limited` with a `Retry-After` (the time the budget needs, spread) and a body, and
/// nothing of it is stored or charged: a smaller request still fits what is left. Meanwhile another key publishes on a budget of its own,
/// and a client in the room it publishes to receives it.
#[tokio::test]
async fn abuse_one_api_key_is_held_to_the_publish_byte_budget() {
    bounded(async {
        let server = ServerProcess::start(&[
            "--api-key",
            KEY,
            "--api-key",
            OTHER_KEY,
            "--api-publish-bytes-per-sec",
            "100000",
            "--api-publish-bytes-burst",
            "8388608",
        ]);
        let client = server.client();
        let mut bystander = Bystander::join(&client, "alice", "chat:lobby").await;
        let http = reqwest::Client::new();
        let url = client.url("/v1/publish");

        let first = publish(&http, &url, KEY, &batch("flood", "a")).await;
        assert_eq!(first.status(), 200, "the burst holds one batch");
        let refused = publish(&http, &url, KEY, &batch("flood", "b")).await;
        assert_eq!(refused.status(), 429);
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "rate_limited", "{body}");
        let retry_ms = body["retry_after_ms"].as_u64().expect("retry_after_ms");
        // 6 MB asked, about 2.4 MB left at 100 KB/s: about 36 s (less what refilled while the
        // first batch was stored), spread to at most twice that.
        assert!((10_000..=73_000).contains(&retry_ms), "{retry_ms} ms");
        assert_eq!(retry_after, retry_ms.div_ceil(1000), "the header says the same");
        let history: Value = http
            .get(client.url("/v1/rooms/flood/history?limit=1"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(history["head"], 100, "nothing of the refused batch was stored: {}", history["head"]);

        // Another key is not held by this one's budget; its message reaches the client.
        let other = publish(
            &http,
            &url,
            OTHER_KEY,
            &json!({"room": "chat:lobby", "payload": "from the other backend"}),
        )
        .await;
        assert_eq!(other.status(), 200);
        bystander
            .wait_for("the other key's message", |f| {
                matches!(f, rtlink_protocol::ServerFrame::Message { payload, .. } if payload == "\"from the other backend\"")
            })
            .await;

        // The refusal charged nothing: what is left of the budget still takes a smaller
        // request.
        let small = publish(
            &http,
            &url,
            KEY,
            &json!({"room": "flood", "payload": "x".repeat(PAYLOAD), "id": "small"}),
        )
        .await;
        assert_eq!(small.status(), 200, "the refused batch was not charged");
        eprintln!(
            "api budget: a second 6 MB batch refused 429 with retry_after_ms {retry_ms} (Retry-After {retry_after}), nothing stored; a 60 KB request then accepted"
        );
        bystander.assert_unaffected(&client).await;
    })
    .await;
}
