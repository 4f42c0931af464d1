//! Several endpoints in the browser: clients given the URLs of two real nodes of one cluster
//! (one real Redis) lose the preferred node mid-stream. They fail over to the second URL, open a
//! new session there and resume the room from their offsets: every message once, in order, on
//! every transport.
//!
//! Run by `make test-browser` (scripts/with-servers: `RTLINK_NODE_A`, which this test stops for
//! good, and `RTLINK_NODE_B`).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod browser_util;

use browser_util::*;
use js_sys::{Array, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn post(url: &str) -> Result<JsValue, JsValue> {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    JsFuture::from(
        web_sys::window()
            .unwrap()
            .fetch_with_str_and_init(url, &init),
    )
    .await
}

async fn healthy(base: &str) -> bool {
    let answer = JsFuture::from(
        web_sys::window()
            .unwrap()
            .fetch_with_str(&format!("{base}/healthz")),
    )
    .await;
    answer.is_ok_and(|r| r.unchecked_into::<web_sys::Response>().ok())
}

#[wasm_bindgen_test]
async fn the_preferred_node_killed_mid_stream_clients_fail_over_losing_nothing() {
    ready().await;
    let (a, b) = (server("node-a"), server("node-b"));
    let room_name = unique_room("failover");
    let mut receivers = Vec::new();
    for transport in ["websocket", "sse", "long-polling"] {
        // Both URLs, node A first; tokens come from node B (the nodes share the secret).
        let opts = options_via(&a, &b, transport, Some(&[transport]));
        Reflect::set(
            &opts,
            &"url".into(),
            &Array::of2(&a.as_str().into(), &b.as_str().into()),
        )
        .unwrap();
        let client = RealtimeClient::new(opts).unwrap();
        let states = Recorder::default();
        let _ = client.on("state", states.listener()).unwrap();
        client.connect();
        let room = client.room(&room_name, JsValue::UNDEFINED).unwrap();
        let messages = Recorder::default();
        let _ = room.on("message", messages.listener()).unwrap();
        let subscribed = Recorder::default();
        let _ = room.on("subscribed", subscribed.listener()).unwrap();
        wait_for(&format!("{transport} subscribed on node A"), 10_000, || {
            !subscribed.values().is_empty()
        })
        .await;
        assert_eq!(transport_of(&client), transport);
        receivers.push((transport, client, states, messages, room));
    }
    let (sender, _) = connected(&b, "sender", None).await;
    let tx = sender.room(&room_name, JsValue::UNDEFINED).unwrap();

    let mut acks = Vec::new();
    for i in 0..60 {
        acks.push(tx.publish(JsValue::from_str(&format!("m{i}"))));
        if i == 20 {
            // Mid-stream: everyone has some of it, then node A is gone (it exits before answering).
            for (t, _, _, messages, _) in &receivers {
                wait_for(&format!("{t} receiving"), 10_000, || {
                    !messages.values().is_empty()
                })
                .await;
            }
            let _ = post(&format!("{a}/v1/test/exit")).await;
        }
        // The publisher's pace (one message every 30 ms), not a wait for a result.
        sleep(30).await;
    }
    for ack in acks {
        JsFuture::from(ack).await.expect("every publish acked");
    }
    assert!(!healthy(&a).await, "node A is down");
    // A last message: delivery is in order, so once it arrives everything before it has too.
    publish(&tx, "last").await;
    let expected: Vec<String> = (0..60)
        .map(|i| format!("m{i}"))
        .chain(["last".to_owned()])
        .collect();
    for (t, _, states, messages, _) in &receivers {
        wait_for(&format!("{t} caught up on node B"), 20_000, || {
            messages
                .values()
                .last()
                .is_some_and(|m| get(m, "payload").as_string().as_deref() == Some("last"))
        })
        .await;
        let payloads: Vec<String> = messages
            .values()
            .iter()
            .map(|m| get(m, "payload").as_string().unwrap())
            .collect();
        assert_eq!(payloads, expected, "{t}: every message once, in order");
        assert_eq!(offsets(messages), (1..=61).collect::<Vec<u64>>(), "{t}");
        // It noticed (left `open`) and is open again: on node B, the only one left.
        assert!(
            states
                .values()
                .iter()
                .filter(|s| get(s, "state").as_string().as_deref() == Some("open"))
                .count()
                >= 2,
            "{t}"
        );
        assert!(state_is(states, "open"), "{t}");
    }
    for (t, client, _, _, _) in &receivers {
        assert_eq!(&transport_of(client), t, "no step down the ladder");
        client.close();
    }
    sender.close();
}

#[wasm_bindgen_test]
async fn a_bad_url_list_is_refused_with_invalid_options() {
    ready().await;
    let bad: [JsValue; 5] = [
        Array::new().into(),
        Array::of2(&"http://127.0.0.1:1".into(), &5.into()).into(),
        Array::of1(&"http://a b".into()).into(),
        Array::of2(&"http://127.0.0.1:1".into(), &"ws://127.0.0.1:2".into()).into(),
        5.into(),
    ];
    for url in bad {
        let opts = options("http://127.0.0.1:1", "nobody", None);
        Reflect::set(&opts, &"url".into(), &url).unwrap();
        let err = RealtimeClient::new(opts).err().expect("refused");
        assert_eq!(
            get(&err, "code").as_string().as_deref(),
            Some("invalid_options"),
            "{url:?}"
        );
    }
}
