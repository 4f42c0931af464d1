//! Browser tests: the wasm client in headless Chromium against real `rtlink-server`s.
//!
//! Run by `make test-browser` (scripts/with-servers starts the servers and passes their URLs at
//! compile time): `RTLINK_SERVER` (all transports, Redis, restartable), `RTLINK_SERVER_NO_WS`
//! and `RTLINK_SERVER_POLL_ONLY`.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod browser_util;

use browser_util::*;
use js_sys::{Object, Promise, Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn round_trip_on(transport: &str) {
    let base = server("main");
    let (client, _states) = connected(&base, "solo", Some(&[transport])).await;
    assert_eq!(transport_of(&client), transport);
    let room = client.room(&unique_room("rt"), JsValue::UNDEFINED).unwrap();
    let messages = Recorder::default();
    let _ = room.on("message", messages.listener()).unwrap();
    let subscribed = Recorder::default();
    let _ = room.on("subscribed", subscribed.listener()).unwrap();
    wait_for("subscribed", 5_000, || !subscribed.values().is_empty()).await;
    for i in 0..3 {
        let ack = publish(&room, &format!("m{i}")).await;
        assert_eq!(get(&ack, "offset").as_f64(), Some((i + 1) as f64));
    }
    wait_for("3 messages", 5_000, || messages.values().len() == 3).await;
    assert_eq!(offsets(&messages), vec![1, 2, 3]);
    assert_eq!(
        get(&messages.values()[2], "payload").as_string().as_deref(),
        Some("m2")
    );
    client.close();
}

#[wasm_bindgen_test]
async fn websocket_round_trip() {
    round_trip_on("websocket").await;
}

#[wasm_bindgen_test]
async fn sse_round_trip() {
    round_trip_on("sse").await;
}

#[wasm_bindgen_test]
async fn long_polling_round_trip() {
    round_trip_on("long-polling").await;
}

#[wasm_bindgen_test]
async fn websocket_disabled_lands_on_sse() {
    let (client, _s) = connected(&server("no-ws"), "ladder", None).await;
    assert_eq!(transport_of(&client), "sse");
    client.close();
}

#[wasm_bindgen_test]
async fn websocket_and_sse_disabled_lands_on_long_polling() {
    let (client, _s) = connected(&server("poll-only"), "ladder", None).await;
    assert_eq!(transport_of(&client), "long-polling");
    let room = client.room(&unique_room("lp"), JsValue::UNDEFINED).unwrap();
    let ack = publish(&room, "over polling").await;
    assert_eq!(get(&ack, "offset").as_f64(), Some(1.0));
    client.close();
}

#[wasm_bindgen_test]
async fn two_clients_see_each_others_presence_and_typing() {
    let base = server("main");
    let room_name = unique_room("pt");
    let (ana, _s1) = connected(&base, "Ana", None).await;
    let (bo, _s2) = connected(&base, "Bo", None).await;
    let ana_room = ana.room(&room_name, JsValue::UNDEFINED).unwrap();
    let bo_room = bo.room(&room_name, JsValue::UNDEFINED).unwrap();
    let ana_presence = Recorder::default();
    let _ = ana_room
        .presence()
        .on("change", ana_presence.listener())
        .unwrap();
    let bo_typing = Recorder::default();
    let _ = bo_room.typing().on("change", bo_typing.listener()).unwrap();
    ana_room
        .presence()
        .set(JSON::parse(r#"{"status":"here"}"#).unwrap())
        .unwrap();
    bo_room
        .presence()
        .set(JSON::parse(r#"{"status":"busy"}"#).unwrap())
        .unwrap();

    let names = |list: JsValue| -> Vec<String> {
        js_sys::Array::from(&list)
            .iter()
            .map(|m| get(&m, "name").as_string().unwrap())
            .collect()
    };
    wait_for("Ana to see Bo", 5_000, || {
        names(ana_room.presence().list()) == ["Ana", "Bo"]
            || names(ana_room.presence().list()) == ["Bo", "Ana"]
    })
    .await;
    let bo_entry = js_sys::Array::from(&ana_room.presence().list())
        .iter()
        .find(|m| get(m, "name").as_string().as_deref() == Some("Bo"))
        .unwrap();
    wait_for("Bo's status", 5_000, || {
        let list = js_sys::Array::from(&ana_room.presence().list());
        list.iter()
            .any(|m| get(&get(&m, "meta"), "status").as_string().as_deref() == Some("busy"))
    })
    .await;
    assert_eq!(get(&bo_entry, "connections").as_f64(), Some(1.0));

    ana_room.typing().keystroke();
    wait_for("Bo to see Ana typing", 5_000, || {
        names(bo_room.typing().list()) == ["Ana"]
    })
    .await;
    ana_room.typing().stop();
    wait_for("Ana's typing to clear", 5_000, || {
        names(bo_room.typing().list()).is_empty()
    })
    .await;
    assert!(!bo_typing.values().is_empty());
    ana.close();
    bo.close();
}

async fn crash_main_server(base: &str) {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    let w = web_sys::window().unwrap();
    // The server exits before answering, so the fetch itself may fail: that is the point.
    let _ = JsFuture::from(w.fetch_with_str_and_init(&format!("{base}/v1/test/exit"), &init)).await;
}

#[wasm_bindgen_test]
async fn server_restart_mid_stream_loses_and_duplicates_nothing() {
    let base = server("main");
    let room_name = unique_room("restart");
    let (sender, sender_states) = connected(&base, "sender", None).await;
    let (receiver, receiver_states) = connected(&base, "receiver", None).await;
    let tx = sender.room(&room_name, JsValue::UNDEFINED).unwrap();
    let rx = receiver.room(&room_name, JsValue::UNDEFINED).unwrap();
    let messages = Recorder::default();
    let _ = rx.on("message", messages.listener()).unwrap();
    let subscribed = Recorder::default();
    let _ = rx.on("subscribed", subscribed.listener()).unwrap();
    wait_for("receiver subscribed", 5_000, || {
        !subscribed.values().is_empty()
    })
    .await;

    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(tx.publish(JsValue::from_str(&format!("before-{i}"))));
    }
    wait_for("5 messages before the crash", 5_000, || {
        messages.values().len() == 5
    })
    .await;
    crash_main_server(&base).await;
    wait_for("sender to notice", 10_000, || {
        !state_is(&sender_states, "open")
    })
    .await;
    // Published while the server is down: queued, sent once after the reconnect.
    for i in 0..5 {
        acks.push(tx.publish(JsValue::from_str(&format!("during-{i}"))));
    }
    wait_for("sender back", 20_000, || state_is(&sender_states, "open")).await;
    wait_for("receiver back", 20_000, || {
        state_is(&receiver_states, "open")
    })
    .await;
    for i in 0..5 {
        acks.push(tx.publish(JsValue::from_str(&format!("after-{i}"))));
    }
    for ack in acks {
        JsFuture::from(ack).await.expect("every publish acked");
    }
    wait_for("15 messages", 10_000, || messages.values().len() >= 15).await;
    sleep(300).await;
    assert_eq!(
        offsets(&messages),
        (1..=15).collect::<Vec<u64>>(),
        "no loss, no duplicate, in order"
    );
    let payloads: Vec<String> = messages
        .values()
        .iter()
        .map(|m| get(m, "payload").as_string().unwrap())
        .collect();
    assert_eq!(
        &payloads[..5],
        ["before-0", "before-1", "before-2", "before-3", "before-4"]
    );
    assert_eq!(
        payloads.iter().filter(|p| p.starts_with("during-")).count(),
        5
    );
    sender.close();
    receiver.close();
}

#[wasm_bindgen_test]
async fn close_leaves_no_timer_or_listener_after_50_reconnects() {
    let base = server("main");
    ready().await;
    let before = live_listeners();
    let (client, states) = connected(&base, "leaky", Some(&["websocket"])).await;
    let w: web_sys::EventTarget = web_sys::window().unwrap().into();
    let during = live_listeners();
    for i in 0..50 {
        // Going offline closes the transport; coming back opens a new one.
        w.dispatch_event(&web_sys::Event::new("offline").unwrap())
            .unwrap();
        wait_for("offline", 2_000, || state_is(&states, "offline")).await;
        w.dispatch_event(&web_sys::Event::new("online").unwrap())
            .unwrap();
        wait_for(&format!("reconnect {i}"), 5_000, || {
            state_is(&states, "open")
        })
        .await;
    }
    assert_eq!(
        live_listeners(),
        during,
        "listeners and timers must not grow with reconnects"
    );
    client.close();
    assert_eq!(
        live_listeners(),
        before,
        "close() removes every listener and the timer"
    );
}

#[wasm_bindgen_test]
async fn starts_on_a_remembered_fallback_and_probes_back_up_without_losing_messages() {
    let base = server("main");
    // A tab that last worked on long polling starts there (sessionStorage), then probes SSE and
    // WebSocket in the background and switches up with the same session.
    let storage = web_sys::window()
        .unwrap()
        .session_storage()
        .unwrap()
        .unwrap();
    storage
        .set_item(&format!("rtlink:transport:{base}"), "long-polling")
        .unwrap();
    ready().await;
    let opts = options(&base, "climber", None);
    Reflect::set(&opts, &"rememberTransport".into(), &true.into()).unwrap();
    Reflect::set(&opts, &"probeIntervalMs".into(), &400.into()).unwrap();
    let client = RealtimeClient::new(opts).unwrap();
    let states = Recorder::default();
    let _ = client.on("state", states.listener()).unwrap();
    client.connect();
    wait_for("open", 10_000, || state_is(&states, "open")).await;
    assert_eq!(
        transport_of(&client),
        "long-polling",
        "started on the remembered rung"
    );

    let (other, _s) = connected(&base, "publisher", Some(&["websocket"])).await;
    let room_name = unique_room("climb");
    let rx = client.room(&room_name, JsValue::UNDEFINED).unwrap();
    let tx = other.room(&room_name, JsValue::UNDEFINED).unwrap();
    let messages = Recorder::default();
    let _ = rx.on("message", messages.listener()).unwrap();
    let subscribed = Recorder::default();
    let _ = rx.on("subscribed", subscribed.listener()).unwrap();
    wait_for("subscribed", 5_000, || !subscribed.values().is_empty()).await;
    // Publish steadily while the client climbs long polling -> SSE -> WebSocket.
    let mut sent = 0u64;
    let mut waited = 0;
    while transport_of(&client) != "websocket" {
        assert!(
            waited < 15_000,
            "still on {} after 15 s",
            transport_of(&client)
        );
        publish(&tx, &format!("m{sent}")).await;
        sent += 1;
        sleep(100).await;
        waited += 100;
    }
    for _ in 0..5 {
        publish(&tx, &format!("m{sent}")).await;
        sent += 1;
    }
    wait_for("every message", 10_000, || {
        messages.values().len() as u64 >= sent
    })
    .await;
    sleep(300).await;
    assert_eq!(
        offsets(&messages),
        (1..=sent).collect::<Vec<u64>>(),
        "no loss, no duplicate, in order across both switches"
    );
    let seen: Vec<String> = states
        .values()
        .iter()
        .filter_map(|s| get(s, "transport").as_string())
        .fold(Vec::new(), |mut acc, t| {
            if acc.last() != Some(&t) {
                acc.push(t);
            }
            acc
        });
    assert!(
        seen.ends_with(&[
            "long-polling".to_string(),
            "sse".to_string(),
            "websocket".to_string()
        ]),
        "climbed rung by rung: {seen:?}"
    );
    storage
        .remove_item(&format!("rtlink:transport:{base}"))
        .unwrap();
    client.close();
    other.close();
}

#[wasm_bindgen_test]
async fn joining_with_history_delivers_recent_messages_first() {
    let base = server("main");
    let room_name = unique_room("hist");
    let (writer, _s1) = connected(&base, "writer", None).await;
    let tx = writer.room(&room_name, JsValue::UNDEFINED).unwrap();
    for i in 1..=5 {
        publish(&tx, &format!("old-{i}")).await;
    }
    let (reader, _s2) = connected(&base, "reader", None).await;
    let opts = Object::new();
    Reflect::set(&opts, &"history".into(), &3.into()).unwrap();
    let rx = reader.room(&room_name, opts.into()).unwrap();
    let messages = Recorder::default();
    let _ = rx.on("message", messages.listener()).unwrap();
    wait_for("3 recent messages", 5_000, || messages.values().len() >= 3).await;
    publish(&tx, "new").await;
    wait_for("the live one", 5_000, || messages.values().len() >= 4).await;
    assert_eq!(offsets(&messages), vec![3, 4, 5, 6]);
    let bad = Object::new();
    Reflect::set(&bad, &"history".into(), &"lots".into()).unwrap();
    let err = reader
        .room("elsewhere", bad.into())
        .err()
        .expect("invalid history refused");
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("invalid_argument")
    );
    writer.close();
    reader.close();
}

#[wasm_bindgen_test]
async fn a_refused_token_ends_with_the_unauthorized_code() {
    let base = server("main");
    ready().await;
    let bad_token =
        Closure::<dyn FnMut() -> JsValue>::new(|| JsValue::from_str("not-a-jwt")).into_js_value();
    let client = RealtimeClient::new(options_with_token(&base, bad_token, None)).unwrap();
    let errors = Recorder::default();
    let _ = client.on("error", errors.listener()).unwrap();
    client.connect();
    wait_for("the terminal error", 10_000, || !errors.values().is_empty()).await;
    let error = errors.last().unwrap();
    assert_eq!(
        get(&error, "code").as_string().as_deref(),
        Some("unauthorized"),
        "the cause, not just \"closed\""
    );
    assert_eq!(
        get(&client.state(), "state").as_string().as_deref(),
        Some("closed")
    );
}

/// A string of `n` double quotes: its JSON text (the payload) is `2n + 2` bytes, and `4n + …`
/// once escaped again inside a frame.
fn quotes(n: usize) -> JsValue {
    JsValue::from_str(&"\"".repeat(n))
}

#[wasm_bindgen_test]
async fn a_publish_too_large_once_encoded_fails_alone_and_the_connection_stays() {
    let base = server("main");
    for transport in ["websocket", "sse"] {
        let (client, states) = connected(&base, "big", Some(&[transport])).await;
        let room = client
            .room(&unique_room("big"), JsValue::UNDEFINED)
            .unwrap();
        // A 40,002-byte payload, under the server's 65,536-byte frame limit, but a frame of
        // over 80,000 bytes once escaped.
        let refused = JsFuture::from(room.publish(quotes(20_000))).await;
        let error = refused.expect_err("refused before sending");
        assert_eq!(
            get(&error, "code").as_string().as_deref(),
            Some("too_large"),
            "{transport}"
        );
        let ack = publish(&room, "small").await;
        assert_eq!(
            get(&ack, "offset").as_f64(),
            Some(1.0),
            "{transport}: the next publish goes through"
        );
        let reconnects = states
            .values()
            .iter()
            .filter(|s| get(s, "state").as_string().as_deref() == Some("connecting"))
            .count();
        assert_eq!(reconnects, 1, "{transport}: the connection stayed");
        client.close();
    }
}

#[wasm_bindgen_test]
async fn an_offline_queue_larger_than_one_upstream_body_arrives_whole_over_sse_and_long_polling() {
    let base = server("main");
    for transport in ["sse", "long-polling"] {
        let (client, states) = connected(&base, "queue", Some(&[transport])).await;
        let room_name = unique_room("queue");
        let room = client.room(&room_name, JsValue::UNDEFINED).unwrap();
        let subscribed = Recorder::default();
        let _ = room.on("subscribed", subscribed.listener()).unwrap();
        wait_for("subscribed", 5_000, || !subscribed.values().is_empty()).await;
        let w: web_sys::EventTarget = web_sys::window().unwrap().into();
        w.dispatch_event(&web_sys::Event::new("offline").unwrap())
            .unwrap();
        wait_for("offline", 2_000, || state_is(&states, "offline")).await;
        // 30 publishes of ~20 KB (within the server's burst of 40): about 600 KB queued, many
        // times the 68 KB body limit.
        let filler = "x".repeat(20_000);
        let acks: Vec<Promise> = (0..30)
            .map(|i| room.publish(JsValue::from_str(&format!("{i}:{filler}"))))
            .collect();
        w.dispatch_event(&web_sys::Event::new("online").unwrap())
            .unwrap();
        let mut offsets = Vec::new();
        for ack in acks {
            let ack = JsFuture::from(ack)
                .await
                .expect("every queued publish acked");
            offsets.push(get(&ack, "offset").as_f64().unwrap() as u64);
        }
        assert_eq!(
            offsets,
            (1..=30).collect::<Vec<u64>>(),
            "{transport}: each stored once, in order"
        );
        client.close();
    }
}

#[wasm_bindgen_test]
async fn a_connected_client_the_app_keeps_no_reference_to_stays_connected() {
    // An app that only keeps its listeners (`new RealtimeClient(…).connect()` and room handlers)
    // must not lose the connection when the garbage collector takes the handles: here the
    // handles are dropped outright, which is what collecting them does.
    let base = server("main");
    let room_name = unique_room("orphan");
    let messages = Recorder::default();
    let subscribed = Recorder::default();
    {
        let (client, _states) = connected(&base, "orphan", None).await;
        let room = client.room(&room_name, JsValue::UNDEFINED).unwrap();
        let _ = room.on("message", messages.listener()).unwrap();
        let _ = room.on("subscribed", subscribed.listener()).unwrap();
        wait_for("subscribed", 5_000, || !subscribed.values().is_empty()).await;
    }
    let (publisher, _s) = connected(&base, "publisher", None).await;
    let tx = publisher.room(&room_name, JsValue::UNDEFINED).unwrap();
    publish(&tx, "to nobody's handle").await;
    wait_for("the message", 5_000, || !messages.values().is_empty()).await;
    publisher.close();
}
