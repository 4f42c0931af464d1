#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used)]
//! Several endpoints (`url: string[]`) on the virtual clock: two nodes of a fake cluster share
//! one store (rooms and offsets, like Redis) and each holds its own sessions. The client fails
//! over when a node stops answering, never because one is overloaded, does not retry a dead one
//! hot, comes back to the preferred one, and resumes its rooms from offsets on the new node.
mod core_util;
use core_util::*;
use rtlink::core::*;

fn two() -> Config {
    Config {
        endpoints: 2,
        ..Config::default()
    }
}

/// The endpoint of each ticket step of tab 0 at or after `since`.
fn tickets_since(sim: &Sim, since: Instant) -> Vec<usize> {
    sim.server
        .ticket_log
        .iter()
        .filter(|(t, tab, _)| *t >= since && *tab == 0)
        .map(|(_, _, e)| *e)
        .collect()
}

/// Publishes `n` messages to `room`, one every `every_ms`, running the clock in between.
fn publish_over_time(sim: &mut Sim, room: &str, n: usize, every_ms: u64) {
    for i in 0..n {
        sim.server_publish(room, "bob", &format!("m{i}"));
        sim.run_for(every_ms);
    }
}

fn delivered(sim: &Sim, room: &str) -> Vec<u64> {
    sim.tabs[0].delivered.get(room).cloned().unwrap_or_default()
}

#[test]
fn a_node_lost_mid_stream_fails_over_and_resumes_from_offsets() {
    for seed in 0..200u64 {
        let mut sim = Sim::one(two());
        sim.tabs[0].client = Client::new(two(), sim.now, seed);
        sim.connect(0, &["news"]);
        assert_eq!(sim.tabs[0].client.endpoint(), 0);
        publish_over_time(&mut sim, "news", 20, 50);
        let killed_at = sim.now;
        sim.kill_node(0);
        // Published while the client looks for another node: stored, delivered on resume.
        publish_over_time(&mut sim, "news", 100, 50);
        sim.run_for(10_000);
        let t = &sim.tabs[0];
        assert!(t.is_open(), "seed {seed}: {:?}", t.states().last());
        assert_eq!(t.client.endpoint(), 1, "seed {seed}");
        // Every offset once, in order (the harness also checks each delivery as it happens).
        assert_eq!(
            delivered(&sim, "news"),
            (1..=120).collect::<Vec<_>>(),
            "seed {seed}"
        );
        // The dead node got exactly `failover_after` ticket steps, then none.
        let tickets = tickets_since(&sim, killed_at);
        assert_eq!(
            tickets.iter().filter(|&&e| e == 0).count(),
            2,
            "seed {seed}: {tickets:?}"
        );
        assert_eq!(tickets.last(), Some(&1));
    }
}

#[test]
fn the_move_is_paced_by_the_jittered_backoff_so_a_crowd_spreads() {
    // Twenty clients lose their node at the same moment: their first tickets on the survivor
    // are spread over the backoff window, not sent in one burst.
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut sim = Sim::new(two(), &names);
    for tab in 0..names.len() {
        sim.connect(tab, &["news"]);
    }
    let killed_at = sim.now;
    sim.kill_node(0);
    sim.run_for(30_000);
    let mut first_on_survivor: Vec<u64> = (0..names.len())
        .map(|tab| {
            let (at, _, _) = sim
                .server
                .ticket_log
                .iter()
                .find(|(t, tb, e)| *t >= killed_at && *tb == tab && *e == 1)
                .unwrap();
            at.millis_since(killed_at)
        })
        .collect();
    first_on_survivor.sort_unstable();
    assert!(sim.tabs.iter().all(Tab::is_open));
    let spread = first_on_survivor[first_on_survivor.len() - 1] - first_on_survivor[0];
    assert!(
        spread >= 300,
        "moves within {spread} ms: {first_on_survivor:?}"
    );
}

#[test]
fn one_refused_connection_is_not_a_failover() {
    let mut sim = Sim::one(two());
    sim.server.dead_nodes.insert(0);
    sim.input(0, Input::Connect);
    // The first ticket step fails; the node is back before the next one.
    sim.run_for(20);
    assert_eq!(tickets_since(&sim, Instant::from_millis(0)), vec![0]);
    sim.revive_node(0);
    sim.run_for(5_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].client.endpoint(), 0);
    assert!(tickets_since(&sim, Instant::from_millis(0))
        .iter()
        .all(|&e| e == 0));
}

#[test]
fn overload_waits_on_the_same_endpoint_and_never_fails_over() {
    let mut sim = Sim::one(two());
    sim.server.ticket_failure = Some(OpenError::Overloaded {
        retry_after_ms: Some(2_000),
    });
    sim.input(0, Input::Connect);
    sim.run_for(10 * 60_000);
    let log: Vec<Instant> = sim.server.ticket_log.iter().map(|(t, _, _)| *t).collect();
    assert!(log.len() >= 10, "{}", log.len());
    assert!(
        sim.server.ticket_log.iter().all(|(_, _, e)| *e == 0),
        "never moved"
    );
    // Each wait is at least the server's delay (jittered upwards, never below).
    for pair in log.windows(2) {
        assert!(pair[1].millis_since(pair[0]) >= 2_000, "{pair:?}");
    }
    // A node that answered 503 between two refusals keeps its earlier miss forgotten: one
    // refused connection after the overload does not move the client either.
    sim.server.ticket_failure = None;
    sim.run_for(60_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].client.endpoint(), 0);
}

#[test]
fn a_dead_endpoint_is_not_retried_hot_and_the_preferred_one_comes_back() {
    let mut sim = Sim::one(two());
    sim.server.dead_nodes.insert(0);
    sim.connect(0, &["news"]);
    sim.run_for(5_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].client.endpoint(), 1);
    assert_eq!(tickets_since(&sim, Instant::from_millis(0)), vec![0, 0, 1]);

    // The link to node 1 blips while node 0 is still in its down period: the client stays on
    // node 1 without touching node 0.
    let blip = sim.now;
    sim.kill(0, None);
    sim.run_for(5_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(tickets_since(&sim, blip), vec![1]);

    // A live session is never moved just to get back to the preferred node.
    sim.revive_node(0);
    let calm = sim.now;
    sim.run_for(30 * 60_000);
    assert!(tickets_since(&sim, calm).is_empty());
    assert_eq!(sim.tabs[0].client.endpoint(), 1);

    // The next reconnect after its down period goes to the preferred node again.
    sim.server_publish("news", "bob", "while moving");
    let again = sim.now;
    sim.kill(0, None);
    sim.run_for(5_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(sim.tabs[0].client.endpoint(), 0);
    assert_eq!(tickets_since(&sim, again), vec![0]);
    assert_eq!(delivered(&sim, "news"), vec![1]);
}

#[test]
fn an_endpoint_back_from_a_down_period_goes_down_at_its_first_miss_for_longer() {
    let cfg = Config {
        endpoint_down_ms: 10_000,
        ..two()
    };
    let mut sim = Sim::one(cfg.clone());
    sim.tabs[0].client = Client::new(cfg, sim.now, 7);
    sim.server.dead_nodes.insert(0);
    sim.connect(0, &["news"]);
    sim.run_for(5_000);
    assert_eq!(sim.tabs[0].client.endpoint(), 1);
    // Reconnects every 20 s (past node 0's first down period of 5-10 s): each time node 0 gets
    // one ticket step only, and as its down periods double it is skipped more often.
    let mut tried = Vec::new();
    for _ in 0..12 {
        sim.run_for(20_000);
        let at = sim.now;
        sim.kill(0, None);
        sim.run_for(5_000);
        assert!(sim.tabs[0].is_open());
        tried.push(tickets_since(&sim, at).iter().filter(|&&e| e == 0).count());
    }
    assert!(tried.iter().all(|&n| n <= 1), "{tried:?}");
    assert_eq!(tried[0], 1, "{tried:?}");
    assert!(
        tried[6..].iter().sum::<usize>() <= 2,
        "down periods grow: {tried:?}"
    );
}

#[test]
fn with_every_endpoint_down_attempts_keep_the_general_backoff_and_find_the_first_one_back() {
    let mut sim = Sim::one(two());
    sim.server.dead_nodes.insert(0);
    sim.server.dead_nodes.insert(1);
    sim.input(0, Input::Connect);
    sim.run_for(10 * 60_000);
    let log: Vec<(Instant, usize)> = sim
        .server
        .ticket_log
        .iter()
        .map(|(t, _, e)| (*t, *e))
        .collect();
    // Never slower than with one URL: the gaps stay within the backoff cap (30 s).
    for pair in log.windows(2) {
        assert!(pair[1].0.millis_since(pair[0].0) <= 30_000, "{pair:?}");
    }
    assert!(log.iter().any(|(_, e)| *e == 0) && log.iter().any(|(_, e)| *e == 1));
    let back = sim.now;
    sim.revive_node(1);
    sim.run_for(61_000);
    assert!(sim.tabs[0].is_open(), "{:?}", tickets_since(&sim, back));
    assert_eq!(sim.tabs[0].client.endpoint(), 1);
}

#[test]
fn a_draining_node_sends_its_clients_to_the_next_endpoint() {
    let mut sim = Sim::one(two());
    sim.connect(0, &["news"]);
    let id = sim.primary(0).unwrap();
    sim.send_to_conn(
        0,
        id,
        ServerFrame::ReconnectAfter {
            min_ms: 0,
            max_ms: 1_000,
        },
    );
    let drained = sim.now;
    sim.server_close(0, CloseCode::SERVER_DRAINING);
    sim.server_publish("news", "bob", "during the drain");
    sim.run_for(3_000);
    assert!(sim.tabs[0].is_open());
    assert_eq!(tickets_since(&sim, drained), vec![1]);
    assert_eq!(delivered(&sim, "news"), vec![1]);
}

#[test]
fn one_endpoint_behaves_as_before() {
    let mut sim = Sim::one(Config::default());
    sim.server.dead_nodes.insert(0);
    sim.input(0, Input::Connect);
    sim.run_for(5 * 60_000);
    assert!(sim.server.ticket_log.len() > 10);
    assert!(sim.server.ticket_log.iter().all(|(_, _, e)| *e == 0));
    sim.revive_node(0);
    sim.run_for(31_000);
    assert!(sim.tabs[0].is_open());
}
