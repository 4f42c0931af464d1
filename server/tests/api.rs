//! The server API for backends against the real server: every endpoint twice, once on one
//! in-memory node and once on two nodes sharing a real `redis-server` (the backend calls node
//! A, the users sit on node B, so everything has to cross the cluster).
#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)] // not every helper is used here
mod support {
    pub mod redis;
}

use std::future::Future;
use std::time::Duration;

use common::{fast_config, resumed, start, start_state, Server, Ws};
use rtlink_protocol::{ClientFrame, CloseCode, ServerFrame};
use rtlink_server::{AppState, Config};
use serde_json::{json, Value};
use support::redis::RedisServer;

const KEY: &str = "backend-key-0123456789";

/// Every test is bounded: a hang is a failure.
async fn bounded<F: Future<Output = ()>>(test: F) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("test timed out");
}

fn config() -> Config {
    let mut c = fast_config();
    c.api_keys = vec![KEY.parse().unwrap()];
    c
}

/// Where the backend calls the API (`api`) and where the users connect (`users`): one node
/// in memory, or two nodes of a Redis cluster.
struct Setup {
    api: Server,
    users: Server,
    _redis: Option<RedisServer>,
}

async fn in_memory() -> Setup {
    let api = start(config()).await;
    let users = common::remote(api.addr);
    Setup {
        api,
        users,
        _redis: None,
    }
}

async fn on_redis() -> Setup {
    let redis = RedisServer::start();
    let node = || async {
        let mut c = config();
        c.redis = Some(redis.url());
        c.redis_node_ttl = Duration::from_secs(1);
        start_state(AppState::from_config(c).await.unwrap()).await
    };
    let api = node().await;
    let users = node().await;
    Setup {
        api,
        users,
        _redis: Some(redis),
    }
}

/// Runs `test` in memory, then on Redis. (A test starts with `let s = s;`: an `async move`
/// block captures only the fields it uses, and the Redis server must live as long as the test.)
async fn both<F, Fut>(test: F)
where
    F: Fn(Setup) -> Fut,
    Fut: Future<Output = ()>,
{
    bounded(async {
        test(in_memory().await).await;
        test(on_redis().await).await;
    })
    .await;
}

/// Status and JSON body of an API call with the right key.
async fn call(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path)).bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn publish(s: &Server, body: Value) -> (u16, Value) {
    call(s, reqwest::Method::POST, "/v1/publish", Some(body)).await
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    call(s, reqwest::Method::GET, path, None).await
}

fn message(f: &ServerFrame) -> Option<(u64, &str, &str)> {
    match f {
        ServerFrame::Message {
            offset,
            payload,
            sender,
            ..
        } => Some((*offset, payload.as_str(), sender.as_str())),
        _ => None,
    }
}

async fn next_message(ws: &mut Ws) -> (u64, String, String) {
    next_message_after(ws, 0).await
}

/// The next message with an offset above `after` (a client's own message may come before or
/// after its ack, which `Ws::publish` waits for).
async fn next_message_after(ws: &mut Ws, after: u64) -> (u64, String, String) {
    let f = ws
        .recv_until(|f| message(f).is_some_and(|(o, _, _)| o > after))
        .await;
    let (o, p, s) = message(&f).unwrap();
    (o, p.to_owned(), s.to_owned())
}

/// A user's WebSocket subscribed to `room`, with a token for `rooms`.
async fn subscribed(s: &Server, user: &str, rooms: &[&str], room: &str) -> Ws {
    let token = s.token_for(user, rooms, 3600);
    subscribed_with(s, &token, room).await
}

async fn subscribed_with(s: &Server, token: &str, room: &str) -> Ws {
    let ticket = s.ticket_with(token).await;
    let mut ws = Ws::connect(&s.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
    ws.send(&ClientFrame::Hello { v: 1, resume: None }).await;
    let welcome = ws.recv().await;
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );
    ws.welcome = Some(welcome);
    let sub = ws.subscribe(room, None).await;
    assert!(matches!(sub, ServerFrame::Subscribed { .. }), "{sub:?}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_delivered_stored_and_deduplicated() {
    both(|s| async move {
        let s = s;
        let mut ana = subscribed(&s.users, "ana", &["*"], "news").await;
        let client_offset = ana.publish("news", "c1", "\"from a client\"").await;

        let (status, body) = publish(&s.api, json!({"room": "news", "payload": {"cpu": 0.5}, "id": "m1"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"room": "news", "offset": client_offset + 1, "duplicate": false}));
        let (offset, payload, sender) = next_message_after(&mut ana, client_offset).await;
        assert_eq!((offset, payload.as_str(), sender.as_str()), (client_offset + 1, r#"{"cpu":0.5}"#, ""));

        // The same id again: stored once, answered with the first offset, delivered once.
        let (status, body) = publish(&s.api, json!({"room": "news", "payload": {"cpu": 0.9}, "id": "m1"})).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"room": "news", "offset": client_offset + 1, "duplicate": true}));
        let (_, body) = publish(&s.api, json!({"room": "news", "payload": "next", "name": "Ops", "sender": "ops-bot"})).await;
        assert_eq!(body["offset"], client_offset + 2);
        let got = ana.recv_until(|f| message(f).is_some()).await;
        assert!(
            matches!(&got, ServerFrame::Message { offset, payload, name, sender, .. }
                if *offset == client_offset + 2 && payload == "\"next\"" && name.as_deref() == Some("Ops") && sender == "ops-bot"),
            "the duplicate was not delivered; got {got:?}"
        );

        // A batch for a dashboard: several rooms, in order.
        let mut weather = subscribed(&s.users, "bob", &["*"], "weather").await;
        let (status, body) = publish(&s.api, json!({"messages": [
            {"room": "weather", "payload": 1},
            {"room": "news", "payload": 2, "id": "m2"},
            {"room": "weather", "payload": 3},
            {"room": "news", "payload": 4, "id": "m2"},
        ]})).await;
        assert_eq!(status, 200, "{body}");
        let offsets: Vec<(String, u64, bool)> = body["results"].as_array().unwrap().iter()
            .map(|r| (r["room"].as_str().unwrap().to_owned(), r["offset"].as_u64().unwrap(), r["duplicate"].as_bool().unwrap()))
            .collect();
        let n = client_offset + 3;
        assert_eq!(offsets, [
            ("weather".into(), 1, false), ("news".into(), n, false),
            ("weather".into(), 2, false), ("news".into(), n, true),
        ]);
        assert_eq!(next_message(&mut weather).await.1, "1");
        assert_eq!(next_message(&mut weather).await.1, "3");
        assert_eq!(next_message(&mut ana).await, (n, "2".into(), String::new()));

        // Resumes like any message: a new connection replays from an offset.
        let mut late = s.users.ws("carl").await;
        late.subscribe("news", Some(client_offset)).await;
        let replayed: Vec<u64> = [next_message(&mut late).await, next_message(&mut late).await, next_message(&mut late).await]
            .iter().map(|m| m.0).collect();
        assert_eq!(replayed, [client_offset + 1, client_offset + 2, n]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refusals_are_http_errors_and_store_nothing() {
    both(|s| async move {
        let s = s;
        let url = s.api.url("/v1/publish");
        let body = json!({"room": "r", "payload": 1});
        let no_key = s.api.http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(no_key.status(), 401);
        assert_eq!(no_key.headers()["www-authenticate"], "Bearer");
        let err: Value = no_key.json().await.unwrap();
        assert_eq!(err["error"], "unauthorized");
        let wrong = s
            .api
            .http
            .post(&url)
            .bearer_auth("backend-key-0123456788")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);

        let refusals = [
            (
                json!({"room": "bad room", "payload": 1}),
                400,
                "invalid_room",
            ),
            (
                json!({"room": "r", "user": "ana", "payload": 1}),
                400,
                "bad_request",
            ),
            (json!({"payload": 1}), 400, "bad_request"),
            (json!({"room": "r"}), 400, "bad_request"),
            (
                json!({"room": "r", "payload": 1, "id": ""}),
                400,
                "bad_request",
            ),
            (
                json!({"room": "r", "payload": "x".repeat(70_000)}),
                413,
                "too_large",
            ),
            (
                json!({"user": "|".repeat(60), "payload": 1}),
                400,
                "invalid_room",
            ),
            (json!({"messages": []}), 400, "bad_request"),
            (
                json!({"messages": vec![json!({"room": "r", "payload": 1}); 101]}),
                400,
                "bad_request",
            ),
        ];
        for (body, status, code) in refusals {
            let (got, err) = publish(&s.api, body.clone()).await;
            assert_eq!(
                (got, err["error"].as_str()),
                (status, Some(code)),
                "{body}: {err}"
            );
            assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let raw = s
            .api
            .http
            .post(&url)
            .bearer_auth(KEY)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 400);

        // A batch with one bad message is refused whole.
        let (status, err) = publish(
            &s.api,
            json!({"messages": [
                {"room": "r", "payload": 1}, {"room": "no/slash", "payload": 2},
            ]}),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            err["message"].as_str().unwrap().starts_with("messages[1]:"),
            "{err}"
        );
        let (_, history) = get(&s.api, "/v1/rooms/r/history").await;
        assert_eq!(history["head"], 0, "nothing was stored: {history}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_is_off_without_keys() {
    bounded(async {
        let s = start(fast_config()).await;
        let (status, err) = publish(&s, json!({"room": "r", "payload": 1})).await;
        assert_eq!(status, 401);
        assert!(
            err["message"].as_str().unwrap().contains("--api-key"),
            "{err}"
        );
        let (status, _) = get(&s, "/v1/rooms/r/presence").await;
        assert_eq!(status, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_every_tab_of_one_user_only() {
    both(|s| async move {
        let s = s;
        // An identity-provider style id, escaped into the room name.
        let user = "auth0|ana";
        let room = "user:auth0:7Cana";
        let mut tab1 = subscribed(&s.users, user, &[], room).await;
        let mut tab2 = subscribed(&s.users, user, &[], room).await;

        // Nobody else gets in, not even with a wildcard or the exact name.
        let mut bob = s.users.ws("bob").await; // rooms ["*"]
        for attempt in [room, "user:ana"] {
            bob.send(&ClientFrame::Subscribe {
                room: attempt.into(),
                since: None,
                epoch: None,
                history: None,
            })
            .await;
            let nack = bob
                .recv_until(|f| matches!(f, ServerFrame::Nack { .. }))
                .await;
            assert!(
                matches!(&nack, ServerFrame::Nack { code, .. } if code.as_str() == "forbidden"),
                "{nack:?}"
            );
        }
        let token = s.users.token_for("eve", &["user:*", room], 3600);
        let ticket = s.users.ticket_with(&token).await;
        let mut eve = Ws::connect(&s.users.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
        eve.send(&ClientFrame::Hello { v: 1, resume: None }).await;
        eve.recv().await;
        eve.send(&ClientFrame::Subscribe {
            room: room.into(),
            since: None,
            epoch: None,
            history: None,
        })
        .await;
        let nack = eve
            .recv_until(|f| matches!(f, ServerFrame::Nack { .. }))
            .await;
        assert!(
            matches!(&nack, ServerFrame::Nack { code, .. } if code.as_str() == "forbidden"),
            "{nack:?}"
        );

        let (status, body) = publish(
            &s.api,
            json!({"user": user, "payload": {"text": "your export is ready"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room"], room);
        let expected = (
            1,
            r#"{"text":"your export is ready"}"#.to_owned(),
            String::new(),
        );
        assert_eq!(next_message(&mut tab1).await, expected);
        assert_eq!(next_message(&mut tab2).await, expected);
        // The same room by its name works too.
        let (_, body) = publish(&s.api, json!({"room": room, "payload": 2})).await;
        assert_eq!(body["offset"], 2);

        // A tab that was offline resumes its notifications from its offset.
        drop(tab2);
        publish(&s.api, json!({"user": user, "payload": 3})).await;
        let mut back = s.users.ws(user).await;
        back.subscribe(room, Some(1)).await;
        assert_eq!(next_message(&mut back).await.1, "2");
        assert_eq!(next_message(&mut back).await.1, "3");
        assert_eq!(next_message(&mut tab1).await.1, "2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_history_for_backends() {
    both(|s| async move {
        let s = s;
        let (status, empty) = get(&s.api, "/v1/rooms/lobby/presence").await;
        assert_eq!(status, 200);
        assert_eq!(
            empty,
            json!({"room": "lobby", "connections": 0, "members": []})
        );

        let mut tab1 = subscribed(&s.users, "ana", &["*"], "lobby").await;
        let _tab2 = subscribed(&s.users, "ana", &["*"], "lobby").await;
        let _bob = subscribed(&s.users, "bob", &["*"], "lobby").await;
        tab1.send(&ClientFrame::Presence {
            room: "lobby".into(),
            meta: "{\"status\":\"away\"}".into(),
        })
        .await;
        // Presence is eventually the same everywhere: wait (bounded) for it on the API node.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let presence = loop {
            let (status, p) = get(&s.api, "/v1/rooms/lobby/presence").await;
            assert_eq!(status, 200);
            let metas: Vec<&str> = p["members"][0]["conns"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["meta"].as_str()).collect())
                .unwrap_or_default();
            if p["connections"] == 3 && metas.contains(&"{\"status\":\"away\"}") {
                break p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "presence never settled: {p}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let members = presence["members"].as_array().unwrap();
        let summary: Vec<(&str, &str, u64)> = members
            .iter()
            .map(|m| {
                (
                    m["user"].as_str().unwrap(),
                    m["name"].as_str().unwrap(),
                    m["connections"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(summary, [("ana", "ana-name", 2), ("bob", "bob-name", 1)]);
        // A member's connections in the order they last changed: tab1 joined first and
        // changed last.
        assert_eq!(
            members[0]["conns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["meta"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["", "{\"status\":\"away\"}"]
        );

        for i in 1..=5 {
            tab1.publish("lobby", &format!("p{i}"), &i.to_string())
                .await;
        }
        let (status, h) = get(&s.api, "/v1/rooms/lobby/history?limit=2").await;
        assert_eq!(status, 200, "{h}");
        assert_eq!(
            (h["head"].as_u64(), h["complete"].as_bool()),
            (Some(5), Some(true))
        );
        assert!(h["epoch"].as_str().is_some_and(|e| !e.is_empty()));
        let page: Vec<(u64, &str, &str)> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["offset"].as_u64().unwrap(),
                    m["payload"].as_str().unwrap(),
                    m["sender"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(page, [(4, "4", "ana"), (5, "5", "ana")]);
        assert!(h["messages"][0]["stored_at_ms"].as_u64().unwrap() > 0);
        let (_, h) = get(&s.api, "/v1/rooms/lobby/history?since=1&limit=2").await;
        let offsets: Vec<u64> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [2, 3]);
        let (_, h) = get(&s.api, "/v1/rooms/lobby/history").await;
        assert_eq!(
            h["messages"].as_array().unwrap().len(),
            5,
            "default limit covers all five"
        );
        let (_, h) = get(&s.api, "/v1/rooms/quiet/history").await;
        assert_eq!(
            (h["head"].as_u64(), h["messages"].as_array().map(Vec::len)),
            (Some(0), Some(0))
        );

        for (path, code) in [
            ("/v1/rooms/lobby/history?limit=0", "bad_request"),
            ("/v1/rooms/lobby/history?limit=100000", "bad_request"),
            ("/v1/rooms/lobby/history?since=x", "bad_request"),
            ("/v1/rooms/bad%20room/history", "invalid_room"),
            ("/v1/rooms/bad%20room/presence", "invalid_room"),
        ] {
            let (status, err) = get(&s.api, path).await;
            assert_eq!(
                (status, err["error"].as_str()),
                (400, Some(code)),
                "{path}: {err}"
            );
        }
    })
    .await;
}

/// A long-polling client that is between two polls when its user is disconnected learns `4013`
/// from its next poll, not `404 unknown_session` (which would mean "start a new session"); a
/// send it makes first is taken (`204`, dropped) instead of answered `404` for the same reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_polling_session_learns_disconnected_from_its_next_poll() {
    both(|s| async move {
        let s = s; // the whole setup, Redis included, lives as long as the test
        let token = s.users.token_for("ana", &["*"], 3600);
        let ticket = s.users.ticket_with(&token).await;
        let (mut poll, _) = common::Poll::open(&s.users, &ticket, None).await;
        disconnect(&s.api, "ana", 1).await;
        assert_eq!(poll.send(&s.users, vec![ClientFrame::Ping]).await, 204);
        let frames = poll.poll(&s.users).await;
        assert!(is_close(&frames, CloseCode::DISCONNECTED), "{frames:?}");
        assert_eq!(poll.send(&s.users, vec![ClientFrame::Ping]).await, 204);
    })
    .await;
}

/// A session ended by the server API while its client's connection was down (detached, here a
/// WebSocket's) is not started over when the client comes back: whichever transport resumes it
/// gets the close `4013`, a send is dropped. Another user holding the token gets a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_disconnected_while_detached_closes_the_open_that_resumes_it() {
    both(|s| async move {
        let s = s;
        let mut bob = subscribed(&s.users, "bob", &["*"], "lobby").await;
        let ana = subscribed(&s.users, "ana", &["*"], "lobby").await;
        let (ana_session, resume) = (
            common::session_id(ana.welcome()),
            common::resume_token(ana.welcome()),
        );
        drop(ana); // the connection is cut, the session detached until the resume window ends
        bob.recv_until(
            |f| matches!(f, ServerFrame::PresenceLeave { session, .. } if *session == ana_session),
        )
        .await;
        disconnect(&s.api, "ana", 1).await;

        let ticket = s.users.ticket_resuming("ana", &resume, false).await;
        let mut ws = Ws::connect(&s.users.ws_url(&format!("/v1/ws?ticket={ticket}"))).await;
        ws.send(&ClientFrame::Hello {
            v: 1,
            resume: Some(resume.clone()),
        })
        .await;
        assert_eq!(ws.recv_close().await, (Some(4013), vec![]));

        let ticket = s.users.ticket_resuming("ana", &resume, false).await;
        let mut sse = common::Sse::open(&s.users, &format!("ticket={ticket}&v=1"))
            .await
            .expect("an SSE stream");
        let closed = sse.next().await.expect("a close event");
        assert!(is_close(&[closed], CloseCode::DISCONNECTED));
        assert!(sse.next().await.is_none(), "the stream ends after it");

        let ticket = s.users.ticket_resuming("ana", &resume, false).await;
        let url = s.users.url(&format!("/v1/poll?ticket={ticket}&v=1"));
        let resp = s.users.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let batch =
            rtlink_protocol::codec::decode_poll(&resp.bytes().await.unwrap(), usize::MAX).unwrap();
        assert!(
            is_close(&batch.frames, CloseCode::DISCONNECTED),
            "{batch:?}"
        );

        assert_eq!(
            common::send_upstream(&s.users, &resume, vec![ClientFrame::Ping]).await,
            204
        );
        // The resume token is not a way to stop someone else.
        let other = s.users.ws_resume("eve", Some(&resume)).await;
        assert!(!resumed(other.welcome()));
    })
    .await;
}

/// `DELETE /v1/users/{user}/sessions`, expecting `closed` sessions.
async fn disconnect(api: &Server, user: &str, closed: u64) {
    let path = format!("/v1/users/{user}/sessions");
    let (status, body) = call(api, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(
        (status, body["closed"].as_u64()),
        (200, Some(closed)),
        "{body}"
    );
}

/// `frames` is exactly one `close` with `code`.
fn is_close(frames: &[ServerFrame], code: CloseCode) -> bool {
    matches!(frames, [ServerFrame::Close { code: c, .. }] if *c == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_every_session_of_a_user_on_every_node() {
    both(|s| async move {
        let s = s;
        let mut on_users = subscribed(&s.users, "ana", &["*"], "lobby").await;
        let mut on_api = subscribed(&s.api, "ana", &["*"], "lobby").await;
        let old_session = common::resume_token(on_users.welcome());
        let mut bob = subscribed(&s.users, "bob", &["*"], "lobby").await;

        let (status, body) = call(
            &s.api,
            reqwest::Method::DELETE,
            "/v1/users/ana/sessions",
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"user": "ana", "closed": 2}));
        for ws in [&mut on_users, &mut on_api] {
            let (code, _) = ws.recv_close().await;
            assert_eq!(code, Some(4013), "closed as `disconnected`");
        }

        // Ana is gone from presence at once, without the grace period; Bob stays and still
        // gets messages.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (_, p) = get(&s.api, "/v1/rooms/lobby/presence").await;
            let users: Vec<&str> = p["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["user"].as_str())
                .collect();
            if users == ["bob"] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ana still present: {p}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        publish(&s.api, json!({"room": "lobby", "payload": "still here"})).await;
        assert_eq!(next_message(&mut bob).await.1, "\"still here\"");

        // Her old session cannot be resumed; a fresh login works.
        let again = s.users.ws_resume("ana", Some(&old_session)).await;
        assert!(!resumed(again.welcome()));

        // Nobody to disconnect is not an error.
        let (status, body) = call(
            &s.api,
            reqwest::Method::DELETE,
            "/v1/users/nobody/sessions",
            None,
        )
        .await;
        assert_eq!((status, body["closed"].as_u64()), (200, Some(0)));
        let unauth = s
            .api
            .http
            .delete(s.api.url("/v1/users/ana/sessions"))
            .send()
            .await
            .unwrap();
        assert_eq!(unauth.status(), 401);
    })
    .await;
}
