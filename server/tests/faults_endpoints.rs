//! Fault scenarios of a client given several endpoints (`url: string[]`): two real
//! `rtlink-server` nodes sharing one real `redis-server`, each reached at its own URL, and the
//! real client core driven natively by `faultkit` failing over between them. Every scenario
//! prints `FAULT-FIGURES` lines; test names start with `fault_` (`make test-faults`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultkit::rtlink::core::Config;
use faultkit::rtlink::core::TransportKind::{self, LongPoll, Sse, WebSocket};
use faultkit::scenario::{self, bounded, wait_delivered};
use faultkit::{
    ClientOptions, Faults, Figures, Mode, ProxyBuilder, Publisher, Reject, Stack, TestClient,
};

const ROOM: &str = "failover";
const ALL: &[TransportKind] = &[WebSocket, Sse, LongPoll];
const WAIT: Duration = Duration::from_secs(30);

/// A client given `urls` (preferred first), pinned to `ladder`.
fn client(urls: &[String], user: &str, ladder: &[TransportKind]) -> TestClient {
    let config = Config {
        transports: ladder.to_vec(),
        endpoint_down_ms: 10_000,
        ..scenario::fast_client()
    };
    TestClient::connect(ClientOptions::new(&urls[0], user).urls(urls).config(config))
}

async fn subscribed(clients: &[&TestClient]) {
    scenario::subscribe_all(clients, ROOM, WAIT).await.unwrap();
}

/// The preferred node dies (SIGKILL) under clients that know both nodes' URLs, with no balancer
/// in between: their tickets to it are refused, they move to the second URL after two refusals,
/// open a new session there and re-subscribe from their offsets (Redis keeps them). Nothing is
/// lost, duplicated or reordered, on every transport, and nobody steps down the ladder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_endpoints_preferred_node_killed_clients_fail_over_to_the_next_url() {
    bounded(async {
        let mut stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let urls = vec![stack.nodes[0].url(), stack.nodes[1].url()];
        let subscribers: Vec<TestClient> = [
            ("auto", ALL),
            ("sse", &[Sse][..]),
            ("poll", &[LongPoll][..]),
        ]
        .iter()
        .map(|(name, ladder)| client(&urls, name, ladder))
        .collect();
        let publisher = Arc::new(scenario::client(&urls[1], "publisher", &[WebSocket]));
        let all: Vec<&TestClient> = subscribers.iter().chain([&*publisher]).collect();
        subscribed(&all).await;
        for c in &subscribers {
            assert_eq!(c.observed(|o| o.open_endpoints.clone()), vec![0]);
        }
        let (killed_at, acked) =
            scenario::kill_node_while_publishing(&mut stack, 0, publisher, ROOM, WAIT)
                .await
                .unwrap();
        for c in &subscribers {
            wait_delivered(c, ROOM, &acked, WAIT).await.unwrap();
        }
        for c in &subscribers {
            let f = scenario::failover_figures(
                "preferred node SIGKILLed, client fails over to its second URL",
                c,
                ROOM,
                &acked,
                killed_at,
            );
            assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
            assert_eq!(f.tally.delivered, acked.len(), "{f}");
            assert_eq!(f.fallbacks, 0, "{f}");
            assert!(f.recovery.is_some(), "{f}");
            assert_eq!(
                c.observed(|o| o.open_endpoints.last().copied()),
                Some(1),
                "{f}"
            );
        }
        assert_eq!(subscribers[0].snapshot().open_on, Some(WebSocket));
    })
    .await;
}

/// The preferred node is overloaded: its tickets answer `503` with `Retry-After: 1` for a few
/// seconds (a load balancer in front of it says so; the node itself is fine). Clients that lost
/// their connection wait the jittered delay and ask the same node again: overload is never a
/// reason to move, so nobody knocks on the second node, and the refused tickets come at the
/// pace the server asked for, not in a storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_endpoints_overload_is_waited_out_on_the_same_url() {
    bounded(async {
        let stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let front = ProxyBuilder::new(Mode::Http, vec![stack.nodes[0].addr()])
            .start()
            .await
            .unwrap();
        let second = ProxyBuilder::new(Mode::Http, vec![stack.nodes[1].addr()])
            .start()
            .await
            .unwrap();
        let urls = vec![front.url(), second.url()];
        let clients: Vec<TestClient> = (0..6)
            .map(|i| client(&urls, &format!("c{i}"), ALL))
            .collect();
        let all: Vec<&TestClient> = clients.iter().collect();
        subscribed(&all).await;
        let second_tickets = second.counters().tickets;
        front.set(Faults {
            reject: Some(Reject { status: 503, retry_after_s: 1, only: vec![], skip: 0, limit: None }),
            ..Faults::default()
        });
        let refused_from = Instant::now();
        front.reset_connections();
        // Long enough for every client to be refused several times.
        assert!(faultkit::wait_until(WAIT, || front.counters().rejected >= 4 * clients.len() as u64).await);
        let refused = front.counters().rejected;
        let window = refused_from.elapsed();
        front.clear();
        for c in &clients {
            c.wait(WAIT, "reopened", |o| o.is_open() && o.opens.len() >= 2)
                .await
                .unwrap();
        }
        // A client waits at least 1 s (jittered up to 2 s) between refused tickets: over the
        // window each asks at most once per second, plus its first ask.
        let per_client = refused as f64 / clients.len() as f64;
        let bound = window.as_secs_f64() + 1.0;
        println!(
            "FAULT-FIGURES overload (503, Retry-After 1 s) on the preferred URL | {} clients | {refused} refused tickets in {} ms ({per_client:.1} per client, bound {bound:.1}) | tickets to the second URL {}",
            clients.len(),
            window.as_millis(),
            second.counters().tickets - second_tickets
        );
        assert!(per_client <= bound, "a storm: {per_client} per client in {window:?}");
        assert_eq!(second.counters().tickets, second_tickets, "nobody moved to the second URL");
        for c in &clients {
            assert!(c.observed(|o| o.open_endpoints.iter().all(|&e| e == 0)));
            assert_eq!(c.observed(|o| o.fallbacks.len()), 0);
        }
    })
    .await;
}

/// The preferred node stops answering without refusing (a partition, a dead host behind a
/// route: connections hang). The session's heartbeat notices, the next two ticket steps get no
/// answer before the first-frame deadline, and the client moves to the second URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_endpoints_silent_node_is_left_after_two_unanswered_tickets() {
    bounded(async {
        let stack = Stack::cluster(2, scenario::fast_node(faultkit::rtlink_server_bin!()))
            .await
            .unwrap();
        let front = ProxyBuilder::new(Mode::Http, vec![stack.nodes[0].addr()])
            .start()
            .await
            .unwrap();
        let urls = vec![front.url(), stack.nodes[1].url()];
        let subscriber = client(&urls, "auto", ALL);
        let publisher = Arc::new(scenario::client(&urls[1], "publisher", &[WebSocket]));
        subscribed(&[&subscriber, &publisher]).await;
        let publisher = Publisher::start(publisher, ROOM, Duration::from_millis(50), "m");
        assert!(faultkit::wait_until(WAIT, || publisher.sent() >= 20).await);
        let silenced_at = Instant::now();
        front.set(Faults {
            blackhole: true,
            ..Faults::default()
        });
        subscriber
            .wait(WAIT, "moved", |o| {
                o.is_open() && o.open_endpoints.last() == Some(&1)
            })
            .await
            .unwrap();
        publisher.stop().await;
        publisher.settle(WAIT).await.unwrap();
        let acked = publisher.acked();
        wait_delivered(&subscriber, ROOM, &acked, WAIT)
            .await
            .unwrap();
        let reopened = subscriber.observed(|o| o.last_open().map(|(t, _)| t - silenced_at));
        let f = Figures::of(
            "preferred node silent (blackholed), client fails over",
            &subscriber,
            ROOM,
            &acked,
        )
        .detected_since(&subscriber, silenced_at, scenario::DETECTION_DEADLINE)
        .recovered_in(reopened)
        .print();
        assert!(f.tally.is_clean() && f.tally.lost_with_resync == 0, "{f}");
        assert_eq!(f.fallbacks, 0, "{f}");
    })
    .await;
}
