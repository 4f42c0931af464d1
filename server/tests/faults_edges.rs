//! Fault scenarios at the edge: one real `rtlink-server` behind the fault proxy, the real client
//! core (driven natively by `faultkit`) on each transport, and a publisher connected to the
//! server directly, so it keeps publishing while the clients are cut off.
//!
//! Every scenario prints `FAULT-FIGURES` lines (detection against its deadline, recovery, the
//! transport each client ended on, climbing back, messages lost / duplicated / reordered);
//! RELIABILITY.md collects them. Test names start with `fault_` (`make test-faults`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultkit::rtlink::core::TransportKind::{self, LongPoll, Sse, WebSocket};
use faultkit::scenario::{
    self, bounded, wait_delivered, DETECTION_DEADLINE, FIRST_FRAME, PROBE_INTERVAL,
};
use faultkit::{Faults, Figures, Publisher, Stack, TestClient};

const ROOM: &str = "edge";
const ALL: &[TransportKind] = &[WebSocket, Sse, LongPoll];
/// Bound on any one wait of a scenario.
const WAIT: Duration = Duration::from_secs(20);
/// Climbing back: the next probe (interval ± 25 %) plus its first-frame deadline, twice.
const CLIMB: Duration = Duration::from_millis(
    PROBE_INTERVAL.as_millis() as u64 * 5 / 2 + FIRST_FRAME.as_millis() as u64 * 2,
);

/// One scenario's cast: a publisher on the server directly, subscribers through the proxy.
struct Cast {
    stack: Stack,
    publisher: Publisher,
    subscribers: Vec<TestClient>,
}

impl Cast {
    /// Starts a node behind the proxy, `subscribers` (name, ladder) through it and a publisher
    /// (every 50 ms) on the node itself; returns once everyone is subscribed.
    async fn start(subscribers: &[(&str, &[TransportKind])]) -> Cast {
        let stack = Stack::single(scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let publisher = Arc::new(scenario::client(
            &stack.nodes[0].url(),
            "publisher",
            &[WebSocket],
        ));
        publisher.subscribe(ROOM);
        let subscribers: Vec<TestClient> = subscribers
            .iter()
            .map(|(name, ladder)| scenario::client(&stack.url(), name, ladder))
            .collect();
        for c in subscribers.iter().chain([&*publisher]) {
            c.subscribe(ROOM);
            c.wait(WAIT, "subscribed", |o| {
                o.subscribed.iter().any(|r| r == ROOM)
            })
            .await
            .unwrap();
        }
        let publisher = Publisher::start(publisher, ROOM, Duration::from_millis(50), "m");
        Cast {
            stack,
            publisher,
            subscribers,
        }
    }

    /// Stops publishing, waits for every ack and for every subscriber to have every acked
    /// message; returns the acked payloads and when each subscriber had them all.
    async fn finish(&self) -> (Vec<String>, Vec<Instant>) {
        // Enough traffic to judge by, however slow the machine is today.
        let published = faultkit::wait_until(WAIT, || self.publisher.sent() >= 40).await;
        assert!(
            published,
            "the publisher sent only {}",
            self.publisher.sent()
        );
        self.publisher.stop().await;
        self.publisher.settle(WAIT).await.unwrap();
        let acked = self.publisher.acked();
        assert!(
            acked.len() >= 40,
            "the publisher got only {} acks",
            acked.len()
        );
        let mut done = Vec::new();
        for c in &self.subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
            done.push(Instant::now());
        }
        (acked, done)
    }

    fn figures(&self, scenario: &str, acked: &[String]) -> Vec<Figures> {
        self.subscribers
            .iter()
            .map(|c| Figures::of(scenario, c, ROOM, acked))
            .collect()
    }
}

/// Waits until `c` has a session open on `kind` that opened after `since`; how long it took.
async fn open_on_after(
    c: &TestClient,
    kind: TransportKind,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    c.wait(within, &format!("open on {kind:?}"), |o| {
        o.open_on == Some(kind) && o.last_open().is_some_and(|(t, _)| t >= since)
    })
    .await
    .ok()
    .map(|_| since.elapsed())
}

/// The first (re)open after `since`, measured from `since`.
fn reopened_after(c: &TestClient, since: Instant) -> Option<Duration> {
    c.observed(|o| {
        o.opens
            .iter()
            .find(|(t, _)| *t >= since)
            .map(|(t, _)| *t - since)
    })
}

/// Baseline: no fault. Every transport delivers everything, nobody drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_baseline_no_fault() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL), ("sse", &[Sse]), ("poll", &[LongPoll])]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (acked, _) = cast.finish().await;
        for f in cast.figures("baseline", &acked) {
            let f = f.print();
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.drops, 0, "{f}");
        }
        let auto = cast.subscribers[0].snapshot();
        assert_eq!(auto.open_on, Some(WebSocket));
    })
    .await;
}

/// Blackhole for 4 s (both ways, sockets open): every client notices within its heartbeat
/// deadline, reconnects once the path is back, resumes, and misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_blackhole() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL), ("sse", &[Sse]), ("poll", &[LongPoll])]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fault_at = Instant::now();
        cast.stack.proxy.set(Faults::blackhole());
        for c in &cast.subscribers {
            c.wait(
                DETECTION_DEADLINE + Duration::from_secs(2),
                "to notice the blackhole",
                |o| o.drops.iter().any(|t| *t >= fault_at),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(fault_at.elapsed())).await;
        let cleared_at = Instant::now();
        cast.stack.proxy.clear();
        for c in &cast.subscribers {
            c.wait(WAIT, "open again", |o| {
                o.is_open() && o.last_open().is_some_and(|(t, _)| t >= cleared_at)
            })
            .await
            .unwrap();
        }
        let (acked, _) = cast.finish().await;
        for (f, c) in cast
            .figures("blackhole 4 s", &acked)
            .into_iter()
            .zip(&cast.subscribers)
        {
            let f = f
                .detected_since(c, fault_at, DETECTION_DEADLINE)
                .recovered_in(reopened_after(c, cleared_at))
                .print();
            assert!(f.tally.is_clean(), "{f}");
            assert!(
                f.detection
                    .is_some_and(|d| d <= DETECTION_DEADLINE + Duration::from_millis(500)),
                "{f}"
            );
        }
        assert_eq!(
            cast.subscribers[0].snapshot().open_on,
            Some(WebSocket),
            "the full ladder stays on WebSocket"
        );
    })
    .await;
}

/// The proxy answers every WebSocket upgrade 502: the full-ladder client steps down to SSE
/// and keeps receiving; once upgrades pass again, its probe climbs back to WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_refused_websocket_upgrade() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL)]).await;
        let auto = &cast.subscribers[0];
        let fault_at = Instant::now();
        cast.stack.proxy.set(Faults::refuse_websocket());
        cast.stack.proxy.reset_connections();
        let to_sse = open_on_after(auto, Sse, fault_at, WAIT).await;
        assert!(to_sse.is_some(), "did not step down to SSE: {:?}", auto.snapshot().fallbacks);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cleared_at = Instant::now();
        cast.stack.proxy.clear();
        let climbed = open_on_after(auto, WebSocket, cleared_at, CLIMB).await;
        let (acked, _) = cast.finish().await;
        let f = cast.figures("WebSocket upgrade refused (502)", &acked).remove(0);
        let f = f.detected_since(auto, fault_at, DETECTION_DEADLINE).recovered_in(to_sse.unwrap_or_default()).climbed_back(climbed.is_some()).print();
        println!("FAULT-FIGURES WebSocket upgrade refused (502) | auto | back on WebSocket {} after the fault ended", climbed.map_or("never".into(), |d| format!("{} ms", d.as_millis())));
        assert!(f.tally.is_clean(), "{f}");
        assert!(f.fallbacks >= 1, "{f}");
        assert!(climbed.is_some(), "{f}");
    })
    .await;
}

/// The proxy passes the upgrade (101) and resets the connection at once: the client sees a
/// WebSocket that dies before its first frame, steps down to SSE at once, and climbs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_websocket_killed_after_upgrade() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL)]).await;
        let auto = &cast.subscribers[0];
        let fault_at = Instant::now();
        cast.stack.proxy.set(Faults::kill_after_upgrade(0));
        cast.stack.proxy.reset_connections();
        let to_sse = open_on_after(auto, Sse, fault_at, WAIT).await;
        assert!(
            to_sse.is_some(),
            "did not step down to SSE: {:?}",
            auto.snapshot()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cleared_at = Instant::now();
        cast.stack.proxy.clear();
        let climbed = open_on_after(auto, WebSocket, cleared_at, CLIMB).await;
        let (acked, _) = cast.finish().await;
        let f = cast.figures("WebSocket killed after 101", &acked).remove(0);
        let f = f
            .recovered_in(to_sse.unwrap_or_default())
            .climbed_back(climbed.is_some())
            .print();
        assert!(f.tally.is_clean(), "{f}");
        assert!(
            auto.snapshot()
                .fallbacks
                .iter()
                .any(|(_, fb)| fb.from == WebSocket),
            "{f}"
        );
        assert!(climbed.is_some(), "{f}");
    })
    .await;
}

/// A buffering proxy that also refuses upgrades: WebSocket fails, the SSE stream never shows
/// its `welcome`, so the client steps down to long polling and keeps receiving there; with the
/// proxy gone it climbs back to WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_buffering_proxy() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL), ("sse", &[Sse])]).await;
        let auto = &cast.subscribers[0];
        let fault_at = Instant::now();
        cast.stack
            .proxy
            .set(Faults::refuse_websocket().and(Faults::buffer_sse()));
        cast.stack.proxy.reset_connections();
        let to_poll = open_on_after(auto, LongPoll, fault_at, WAIT).await;
        assert!(
            to_poll.is_some(),
            "did not step down to long polling: {:?}",
            auto.snapshot().fallbacks
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cleared_at = Instant::now();
        cast.stack.proxy.clear();
        // Long polling probes SSE, then SSE probes WebSocket.
        let climbed = open_on_after(auto, WebSocket, cleared_at, CLIMB * 2).await;
        let (acked, _) = cast.finish().await;
        let mut figures = cast.figures("buffering proxy (+ upgrades refused)", &acked);
        let f = figures
            .remove(0)
            .recovered_in(to_poll.unwrap_or_default())
            .climbed_back(climbed.is_some())
            .print();
        let pinned = figures.remove(0).print();
        assert!(f.tally.is_clean(), "{f}");
        assert!(pinned.tally.is_clean(), "{pinned}");
        assert!(climbed.is_some(), "{f}");
        let reasons: Vec<_> = auto
            .snapshot()
            .fallbacks
            .iter()
            .map(|(_, fb)| (fb.from, fb.to))
            .collect();
        assert!(reasons.contains(&(Sse, LongPoll)), "{reasons:?}");
    })
    .await;
}

/// 200 ms ± 100 ms on every chunk, both ways: nothing drops, nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_latency_and_jitter() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL), ("sse", &[Sse]), ("poll", &[LongPoll])]).await;
        cast.stack.proxy.set(Faults::latency(200, 100));
        tokio::time::sleep(Duration::from_secs(4)).await;
        cast.stack.proxy.clear();
        let (acked, _) = cast.finish().await;
        for f in cast.figures("latency 200 ms + 0-100 ms jitter", &acked) {
            let f = f.print();
            assert!(f.tally.is_clean(), "{f}");
            assert_eq!(f.drops, 0, "{f}");
        }
    })
    .await;
}

/// Every connection is reset at a random time 300-1500 ms after it opens, for 6 s: clients
/// reconnect again and again, resume, and end with every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_random_resets() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL), ("sse", &[Sse]), ("poll", &[LongPoll])]).await;
        cast.stack.proxy.set(Faults::reset(300, 1500));
        tokio::time::sleep(Duration::from_secs(6)).await;
        cast.stack.proxy.clear();
        let auto = &cast.subscribers[0];
        let on_ws = auto
            .wait(CLIMB * 2, "open on WebSocket", |o| {
                o.open_on == Some(WebSocket)
            })
            .await;
        let (acked, _) = cast.finish().await;
        let resets = cast.stack.proxy.counters().resets;
        for (f, c) in cast
            .figures("random resets 300-1500 ms for 6 s", &acked)
            .into_iter()
            .zip(&cast.subscribers)
        {
            let f = f
                .climbed_back(c.observed(|o| o.open_on) == Some(c.observed(|o| o.opens[0].1)))
                .print();
            assert!(f.tally.is_clean(), "{f}");
        }
        println!(
            "FAULT-FIGURES random resets 300-1500 ms for 6 s | proxy | {resets} connections reset"
        );
        assert!(resets >= 6, "only {resets} resets");
        assert!(on_ws.is_ok(), "{on_ws:?}");
    })
    .await;
}

/// The proxy answers `503` with `Retry-After: 2` to every ticket request and all open
/// connections are reset: the clients wait at least the server's delay, never step down the
/// ladder (overload is not a blocked transport), and come back once admission opens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_overloaded_ticket_with_retry_after() {
    bounded(async {
        let cast = Cast::start(&[("auto", ALL), ("sse", &[Sse]), ("poll", &[LongPoll])]).await;
        let mut reject = Faults::reject(503, 2);
        if let Some(r) = reject.reject.as_mut() {
            r.only = vec![faultkit::Opening::Ticket];
        }
        let fault_at = Instant::now();
        cast.stack.proxy.set(reject);
        cast.stack.proxy.reset_connections();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let refused = cast.stack.proxy.counters().rejected;
        let cleared_at = Instant::now();
        cast.stack.proxy.clear();
        // Every client that lost its session opens again now (a long poll may keep its session
        // through the reset: its continuation needs no ticket, and a lost poll loses nothing).
        for c in &cast.subscribers {
            c.wait(WAIT, "open again", |o| o.is_open()).await.unwrap();
        }
        let (acked, _) = cast.finish().await;
        for (f, c) in cast.figures("503 + Retry-After 2 s on tickets", &acked).into_iter().zip(&cast.subscribers) {
            // After a refusal, no attempt comes sooner than Retry-After.
            let attempts: Vec<Instant> = c.observed(|o| {
                o.attempts.iter().filter(|(t, s)| *t >= fault_at && matches!(s, faultkit::rtlink::core::State::Connecting { .. })).map(|(t, _)| *t).collect()
            });
            let gaps: Vec<u128> = attempts.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
            let f = f.recovered_in(reopened_after(c, cleared_at)).print();
            println!("FAULT-FIGURES 503 + Retry-After 2 s on tickets | {} | gaps between attempts (ms) {gaps:?}", c.name());
            assert!(f.tally.is_clean(), "{f}");
            assert_eq!(f.fallbacks, 0, "overload stepped the ladder down: {f}");
            assert!(gaps.iter().all(|g| *g >= 1900), "an attempt came before Retry-After: {gaps:?}");
        }
        // Each client that lost its session was refused at least once (WebSocket and SSE
        // always lose it to the reset).
        let dropped = cast
            .subscribers
            .iter()
            .filter(|c| c.observed(|o| o.drops.iter().any(|t| *t >= fault_at)))
            .count();
        assert!(dropped >= 2 && refused >= dropped as u64, "{refused} refusals for {dropped} dropped clients");
        assert_eq!(cast.subscribers[0].snapshot().open_on, Some(WebSocket));
    })
    .await;
}
