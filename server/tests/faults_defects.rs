//! Regression scenarios of the client defects of issue #8 (2-6), each against a real
//! `rtlink-server` behind the fault proxy, with the real client core driven by `faultkit` as the
//! browser glue drives it (a refused WebSocket upgrade or EventSource is opaque). Each failed on
//! the client before its fix; RELIABILITY.md has their figures. Test names start with `fault_`
//! (`make test-faults`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultkit::rtlink::core::TransportKind::{LongPoll, Sse, WebSocket};
use faultkit::rtlink::core::{ErrorCode, State};
use faultkit::scenario::{self, FIRST_FRAME, PROBE_INTERVAL};
use faultkit::{wait_until, Faults, Figures, Opening, Stack, TestClient};

const ROOM: &str = "defects";
const WAIT: Duration = Duration::from_secs(20);

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rtlink-server"))
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("scenario timed out");
}

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
        let stack = Stack::single(scenario::fast_node(binary())).await.unwrap();
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
        let stack = Stack::single(scenario::fast_node(binary())).await.unwrap();
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
        let stack = Stack::single(scenario::fast_node(binary())).await.unwrap();
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
        let stack = Stack::single(scenario::fast_node(binary())).await.unwrap();
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
        let stack = Stack::single(scenario::fast_node(binary())).await.unwrap();
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
