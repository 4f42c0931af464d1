//! Regression scenarios of the client defects of issue #8 (2-8), each against a real
//! `rtlink-server` behind the fault proxy, with the real client core driven by `faultkit` as the
//! browser glue drives it (a refused WebSocket upgrade or EventSource is opaque). Each failed on
//! the client before its fix; RELIABILITY.md has their figures. Test names start with `fault_`
//! (`make test-faults`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultkit::rtlink::core::TransportKind::{LongPoll, Sse, WebSocket};
use faultkit::rtlink::core::{CloseReason, Config, ErrorCode, State};
use faultkit::scenario::{self, bounded, FIRST_FRAME, PROBE_INTERVAL};
use faultkit::{
    tally, wait_until, ClientOptions, Faults, Figures, Opening, Publisher, Stack, TestClient,
};

const ROOM: &str = "defects";
const WAIT: Duration = Duration::from_secs(20);

async fn subscribed(c: &TestClient) {
    c.subscribe(ROOM);
    c.wait(WAIT, "subscribed", |o| {
        o.subscribed.iter().any(|r| r == ROOM)
    })
    .await
    .unwrap();
}

/// A refusal of `only` openings with `Retry-After: retry_after_s`, after forwarding `skip` of
/// them, at most `limit` times.
fn reject(status: u16, retry_after_s: u64, only: &[Opening], skip: u64, limit: u64) -> Faults {
    let mut faults = Faults::reject(status, retry_after_s);
    if let Some(r) = faults.reject.as_mut() {
        r.only = only.to_vec();
        r.skip = skip;
        r.limit = Some(limit);
    }
    faults
}

/// Defect #8.4: 20 clients refused with `503 Retry-After: 2` at the same moment must not all
/// come back at the same millisecond: every server-given delay is a window, never exact, and
/// never shorter than what the server asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_retry_after_is_jittered() {
    bounded(async {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!())).await.unwrap();
        let clients: Vec<TestClient> = (0..20)
            .map(|i| scenario::client(&stack.url(), &format!("c{i}"), &[WebSocket]))
            .collect();
        for c in &clients {
            c.wait_open(WAIT).await.unwrap();
        }
        stack
            .proxy
            .set(reject(503, 2, &[Opening::Ticket], 0, 20));
        let fault_at = Instant::now();
        stack.proxy.reset_connections();
        let mut returns = Vec::new();
        for c in &clients {
            c.wait(WAIT, "open again", |o| {
                o.is_open() && o.last_open().is_some_and(|(t, _)| t >= fault_at)
            })
            .await
            .unwrap();
            // The attempt after the refusal: the second `Connecting` since the fault.
            let second = c.observed(|o| {
                o.attempts
                    .iter()
                    .filter(|(t, s)| *t >= fault_at && matches!(s, State::Connecting { .. }))
                    .nth(1)
                    .map(|(t, _)| *t - fault_at)
            });
            returns.push(second.unwrap());
        }
        returns.sort();
        let spread = returns[returns.len() - 1] - returns[0];
        println!(
            "FAULT-FIGURES 20 clients refused with Retry-After 2 s | ws | returns {} - {} ms after the refusal, spread {} ms",
            returns[0].as_millis(),
            returns[returns.len() - 1].as_millis(),
            spread.as_millis()
        );
        assert_eq!(stack.proxy.counters().rejected, 20);
        assert!(
            returns[0] >= Duration::from_millis(1_950),
            "came back before Retry-After: {returns:?}"
        );
        assert!(spread >= Duration::from_millis(500), "a storm: {returns:?}");
    })
    .await;
}

/// Defect #8.5: a server at its connection cap. The ticket is issued, the WebSocket upgrade
/// that follows is refused `503` (the cap was reached in between: a browser cannot see that
/// status, so it looks like a blocked transport), and the next tickets are refused `503` too:
/// the server is full, not the transport blocked. Twice in a row. The client must forget each
/// strike and come back on WebSocket, never stepping down (before the fix, two failed upgrades
/// walked it down to SSE and it remembered the fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_full_between_ticket_and_upgrade_does_not_step_down() {
    bounded(async {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!())).await.unwrap();
        let c = scenario::client(&stack.url(), "auto", &[WebSocket, Sse, LongPoll]);
        c.wait_open(WAIT).await.unwrap();
        // Ticket passes, upgrade 503, ticket 503, ticket 503; then once more.
        let full = || reject(503, 1, &[Opening::Ticket, Opening::Ws], 1, 3);
        let fault_at = Instant::now();
        let upgrades = stack.proxy.counters().websocket_upgrades;
        stack.proxy.set(full());
        stack.proxy.reset_connections();
        // The client waits at least 1 s (Retry-After) after the third refusal: time to re-arm.
        assert!(wait_until(WAIT, || stack.proxy.counters().rejected >= 3).await);
        stack.proxy.set(full());
        let rearmed = Instant::now();
        assert!(wait_until(WAIT, || stack.proxy.counters().rejected >= 6).await);
        let recovery = c
            .wait(WAIT, "open again", |o| {
                o.is_open() && o.last_open().is_some_and(|(t, _)| t >= rearmed)
            })
            .await;
        let o = c.snapshot();
        let refused_upgrades = stack.proxy.counters().websocket_upgrades - upgrades - 1;
        println!(
            "FAULT-FIGURES server full between ticket and upgrade, twice | auto | {refused_upgrades} upgrades refused 503, reopened on {:?} {} ms after the fault, fallbacks {:?}",
            o.open_on,
            o.last_open().map_or(0, |(t, _)| (t - fault_at).as_millis()),
            o.fallbacks.iter().map(|(_, f)| f).collect::<Vec<_>>()
        );
        recovery.unwrap();
        assert!(o.fallbacks.is_empty(), "{:?}", o.fallbacks);
        assert_eq!(o.open_on, Some(WebSocket));
        assert_eq!(refused_upgrades, 2, "the scenario did not refuse two upgrades");
    })
    .await;
}

/// Defect #8.6: behind a buffering proxy, a client on long polling probes SSE every probe
/// interval and the proxy holds each probe's `welcome` past its first-frame deadline. Before
/// the fix the server attached the session to the probe and closed the working long poll
/// (4006) each time: a failed probe must never cost the working transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_failed_probe_never_costs_the_working_transport() {
    bounded(async {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!())).await.unwrap();
        stack.proxy.set(Faults::buffer_sse());
        let c = scenario::client(&stack.url(), "auto", &[Sse, LongPoll]);
        subscribed(&c).await;
        c.wait(WAIT, "open on long polling", |o| o.open_on == Some(LongPoll))
            .await
            .unwrap();
        let settled = Instant::now();
        let probes_before = stack.proxy.counters().sse_opens;
        // A publisher on the node itself: the long poll keeps delivering while probes fail.
        let publisher = Arc::new(scenario::client(&stack.nodes[0].url(), "publisher", &[WebSocket]));
        subscribed(&publisher).await;
        let mut payloads = Vec::new();
        let end = settled + PROBE_INTERVAL * 3 + FIRST_FRAME;
        let mut i = 0;
        while Instant::now() < end {
            let payload = format!("p{i}");
            publisher.publish(ROOM, &payload).await.unwrap();
            payloads.push(payload);
            i += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        scenario::wait_delivered(&c, ROOM, &payloads, WAIT).await.unwrap();
        let probes = stack.proxy.counters().sse_opens - probes_before;
        let drops = c.observed(|o| o.drops.iter().filter(|t| **t >= settled).count());
        let f = Figures::of("buffering proxy, SSE probes from long polling", &c, ROOM, &payloads).print();
        println!(
            "FAULT-FIGURES buffering proxy, SSE probes from long polling | auto | {probes} probes held, {drops} drops of the working long poll in {} ms",
            settled.elapsed().as_millis()
        );
        assert!(probes >= 2, "only {probes} probes: the scenario tested nothing");
        assert_eq!(drops, 0);
        assert!(f.tally.is_clean(), "{f}");
        assert_eq!(f.ended_on, Some(LongPoll));
    })
    .await;
}

/// Defect #8.3: 100 publishes of 1 KB queued offline on SSE (about 100 KB, over the server's
/// 64 KB body limit). Before the fix the whole queue went in one `POST /v1/send`, got `413`,
/// and was resent forever. It must go in batches within the limit: every publish acked, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_offline_queue_larger_than_the_body_limit() {
    bounded(async {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!())).await.unwrap();
        let c = Arc::new(scenario::client(&stack.url(), "sse", &[Sse]));
        c.wait_open(WAIT).await.unwrap();
        subscribed(&c).await;
        stack.proxy.set(Faults::blackhole());
        c.wait(WAIT, "offline", |o| !o.is_open()).await.unwrap();
        let payload = "x".repeat(1000);
        let mut ids = Vec::new();
        let mut payloads = Vec::new();
        for i in 0..100 {
            let p = format!("{i}:{payload}");
            ids.push(c.publish(ROOM, &p).await.unwrap());
            payloads.push(p);
        }
        let cleared_at = Instant::now();
        stack.proxy.clear();
        let done = c
            .wait(WAIT, "every publish acked", |o| {
                ids.iter().all(|id| o.acked.contains_key(id))
            })
            .await;
        let _ = scenario::wait_delivered(&c, ROOM, &payloads, WAIT).await;
        let o = c.snapshot();
        let f = Figures::of("offline queue of 100 x 1 KB on SSE", &c, ROOM, &payloads)
            .recovered_in(done.clone().ok())
            .print();
        let drops_after = o.drops.iter().filter(|t| **t >= cleared_at).count();
        println!(
            "FAULT-FIGURES offline queue of 100 x 1 KB on SSE | sse | {} acked, {} failed, {drops_after} drops after the path came back",
            o.acked.len(),
            o.failed.len(),
        );
        done.unwrap();
        assert!(o.failed.is_empty(), "{:?}", o.failed);
        assert_eq!(drops_after, 0);
        assert!(f.tally.is_clean(), "{f}");
    })
    .await;
}

/// Defect #8.2: a publish whose encoded frame (JSON escaping included) exceeds the server's
/// frame limit. Before the fix the server closed the connection and the client resent it after
/// every reconnect, forever. It must fail alone with `too_large`, before it is sent, and keep
/// the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_publish_over_the_frame_limit_fails_alone() {
    bounded(async {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!())).await.unwrap();
        let c = Arc::new(scenario::client(&stack.url(), "ws", &[WebSocket]));
        c.wait_open(WAIT).await.unwrap();
        subscribed(&c).await;
        // 40,000 quotes: within 64 KB as text, about 80 KB once JSON-escaped.
        let big = "\"".repeat(40_000);
        let outcome = c.publish(ROOM, &big).await;
        let small = c.publish(ROOM, "after").await.unwrap();
        let result = c
            .wait(Duration::from_secs(10), "the small publish acked", |o| {
                o.acked.contains_key(&small)
            })
            .await;
        let o = c.snapshot();
        let too_large = match &outcome {
            Err(_) => true,
            Ok(id) => o.failed.get(id) == Some(&ErrorCode::TooLarge),
        };
        println!(
            "FAULT-FIGURES publish of ~80 KB escaped | ws | refused as too large: {too_large} ({outcome:?}), drops {}",
            o.drops.len()
        );
        result.unwrap();
        assert!(too_large && o.drops.is_empty());
        assert!(!o.has_payload(ROOM, &big), "the oversized publish was delivered");
    })
    .await;
}

/// A node that accepts a token exactly until its `exp` (no leeway), so tokens of a few seconds
/// expire during a scenario.
async fn strict_expiry_stack() -> Stack {
    Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!()).args(["--auth-leeway", "0s"]))
        .await
        .unwrap()
}

/// A client whose token provider hands out tokens for `rooms` lasting `ttl_secs`. A second
/// auth failure within 1.5 s of a re-authentication is final (the default is a minute; the
/// scenario's tokens last 3 s).
fn renewing_client(url: &str, user: &str, rooms: &[&str], ttl_secs: i64) -> TestClient {
    let config = Config {
        transports: vec![WebSocket, Sse, LongPoll],
        reauth_window_ms: 1_500,
        ..scenario::fast_client()
    };
    TestClient::connect(
        ClientOptions::new(url, user)
            .config(config)
            .token(rooms, ttl_secs),
    )
}

/// Defect #8.7: tokens that expire while the session lives. The server closes `4009`, the
/// client gets a fresh token and resumes, again and again, losing nothing. Before the fix the
/// resumed session kept the old claims and expiry, so it looped on `4009` forever and a new
/// token's rooms never took effect. Now the provider's next token drops room `a`: the resume
/// adopts it (`a` is refused `forbidden`, `b` goes on), and with a long token the loop stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_expiring_tokens_are_renewed_and_new_claims_adopted() {
    bounded(async {
        let stack = strict_expiry_stack().await;
        let c = renewing_client(&stack.url(), "renewing", &["a", "b"], 3);
        let publisher = Arc::new(scenario::client(
            &stack.nodes[0].url(),
            "publisher",
            &[WebSocket],
        ));
        for (client, room) in [(&c, "a"), (&c, "b"), (&*publisher, "a"), (&*publisher, "b")] {
            client.subscribe(room);
            client
                .wait(WAIT, "subscribed", |o| o.subscribed.iter().any(|r| r == room))
                .await
                .unwrap();
        }
        let in_a = Publisher::start(publisher.clone(), "a", Duration::from_millis(100), "a");
        let in_b = Publisher::start(publisher.clone(), "b", Duration::from_millis(100), "b");
        // Two expiries, each followed by a fresh token and a resume.
        c.wait(WAIT, "two renewals", |o| o.drops.len() >= 2 && o.is_open())
            .await
            .unwrap();
        let switched_at = Instant::now();
        c.set_token(&["b"], 3600);
        c.wait(WAIT, "room a refused", |o| {
            o.subscribe_failed
                .iter()
                .any(|(_, r, code)| r == "a" && *code == ErrorCode::Forbidden)
        })
        .await
        .unwrap();
        let adopted = switched_at.elapsed();
        let settled = Instant::now();
        // The long token ends the loop: no drop for twice the old lifetime.
        let dropped = c
            .wait(Duration::from_secs(6), "a drop", |o| {
                o.drops.iter().any(|t| *t > settled)
            })
            .await;
        for p in [&in_a, &in_b] {
            p.stop().await;
            p.settle(WAIT).await.unwrap();
        }
        let acked_b = in_b.acked();
        scenario::wait_delivered(&c, "b", &acked_b, WAIT).await.unwrap();
        let o = c.snapshot();
        let f = Figures::of("token of 3 s renewed, then one without room a", &c, "b", &acked_b)
            .print();
        let a_after = o
            .messages
            .get("a")
            .map_or(0, |m| m.iter().filter(|d| d.at > settled).count());
        let a_tally = tally(&in_a.acked(), o.delivered("a"), false);
        println!(
            "FAULT-FIGURES token of 3 s renewed, then one without room a | renewing | {} expiries (4009) renewed, {} tokens | new claims adopted {} ms after the provider changed | room a before: {} delivered, duplicated {}, reordered {}; after: {a_after} | errors {:?}",
            o.drops.len(),
            o.tokens,
            adopted.as_millis(),
            a_tally.delivered,
            a_tally.duplicated,
            a_tally.reordered,
            o.errors
        );
        assert!(dropped.is_err(), "still looping after a long token: {:?}", o.drops);
        assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
        assert_eq!(f.fallbacks, 0, "{f}");
        assert!(o.errors.is_empty() && o.is_open(), "{:?}", o.errors);
        assert_eq!(a_after, 0, "room a still delivered after it was refused");
        assert_eq!((a_tally.duplicated, a_tally.reordered), (0, 0));
    })
    .await;
}

/// Defect #8.7, the end of the loop: the token provider starts handing out a token that is
/// already expired (a cached one). At its session's expiry the server closes `4009`, the ticket
/// for the resume is refused `401` with the fresh (expired) token, and the client ends with
/// `unauthorized` at once instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_repeated_auth_failures_end_the_session() {
    bounded(async {
        let stack = strict_expiry_stack().await;
        let c = renewing_client(&stack.url(), "stale", &["*"], 3);
        c.wait_open(WAIT).await.unwrap();
        c.set_token(&["*"], -60);
        let opened = Instant::now();
        c.wait(WAIT, "closed", |o| matches!(o.state, State::Closed { .. }))
            .await
            .unwrap();
        let ended = opened.elapsed();
        let tickets = stack.proxy.counters().tickets;
        // Nothing more comes: no ticket request within a few backoff caps.
        let more = wait_until(Duration::from_secs(3), || {
            stack.proxy.counters().tickets > tickets
        })
        .await;
        let o = c.snapshot();
        println!(
            "FAULT-FIGURES provider of expired tokens | stale | ended {} ms after the switch with {:?}; {} tokens, {tickets} ticket requests in all, none after",
            ended.as_millis(),
            o.state,
            o.tokens
        );
        assert_eq!(
            o.state,
            State::Closed {
                reason: CloseReason::Unauthorized
            }
        );
        assert!(o.errors.contains(&CloseReason::Unauthorized), "{:?}", o.errors);
        assert!(!more, "ticket requests after the end");
        assert!(tickets <= 3, "{tickets} ticket requests");
    })
    .await;
}

/// Defect #8.8: publish ids are deduplicated for a window (2 s here), but a client may hold an
/// unacknowledged publish for longer. A publish reaches the server and is stored, its ack is
/// lost with the connection (held in the proxy, then reset), and the path stays down past the
/// window. Before the fix the client resent it after reconnecting and it was stored twice. Now
/// it fails with `expired` (the server may have stored it), while a publish queued offline and
/// never transmitted is sent and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_resend_after_the_dedupe_window_is_never_stored_twice() {
    bounded(async {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!()).args(["--dedupe-window", "2s"]))
            .await
            .unwrap();
        let watcher = scenario::client(&stack.nodes[0].url(), "watcher", &[WebSocket]);
        let c = scenario::client(&stack.url(), "publisher", &[WebSocket]);
        subscribed(&watcher).await;
        subscribed(&c).await;
        // Every byte through the proxy now takes a second: the ack comes back a second after
        // the watcher sees the message.
        stack.proxy.set(Faults::latency(1000, 0));
        let sent_at = Instant::now();
        let id = c.publish(ROOM, "stored-once").await.unwrap();
        watcher
            .wait(WAIT, "stored", |o| o.has_payload(ROOM, "stored-once"))
            .await
            .unwrap();
        stack.proxy.set(Faults::blackhole());
        stack.proxy.reset_connections();
        c.wait(WAIT, "offline", |o| !o.is_open()).await.unwrap();
        assert!(
            !c.observed(|o| o.acked.contains_key(&id)),
            "the ack got through: the scenario tested nothing"
        );
        let fresh = c.publish(ROOM, "queued-offline").await.unwrap();
        // Down past the window (2 s) since the first transmission.
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(sent_at.elapsed())).await;
        stack.proxy.clear();
        c.wait(WAIT, "both publishes settled", |o| {
            [id, fresh]
                .iter()
                .all(|i| o.acked.contains_key(i) || o.failed.contains_key(i))
        })
        .await
        .unwrap();
        watcher
            .wait(WAIT, "the fresh publish", |o| o.has_payload(ROOM, "queued-offline"))
            .await
            .unwrap();
        // Anything resent would have arrived with or before the fresh publish.
        let count = |payload: &str| {
            watcher.observed(|o| o.delivered(ROOM).iter().filter(|d| d.payload == payload).count())
        };
        let o = c.snapshot();
        println!(
            "FAULT-FIGURES ack lost, path down 3 s, dedupe window 2 s | ws | the stored publish: {:?}, stored {} time(s); the one queued offline: {:?}, stored {} time(s)",
            o.failed.get(&id).map_or_else(|| format!("acked {:?}", o.acked.get(&id)), |code| format!("failed {code:?}")),
            count("stored-once"),
            o.acked.get(&fresh).map_or_else(|| format!("failed {:?}", o.failed.get(&fresh)), |off| format!("acked at {off}")),
            count("queued-offline"),
        );
        assert_eq!(count("stored-once"), 1, "stored twice");
        assert_eq!(o.failed.get(&id), Some(&ErrorCode::Expired));
        assert!(o.acked.contains_key(&fresh), "{:?}", o.failed.get(&fresh));
        assert_eq!(count("queued-offline"), 1);
    })
    .await;
}
