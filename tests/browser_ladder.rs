//! The transport ladder in a real browser: the wasm client in headless Chromium, connected to a
//! real `rtlink-server` through the fault proxy (faultkit's `faultproxy`, switched through its
//! HTTP control API), while a publisher connected to the server directly publishes every 100 ms.
//! Each scenario checks what the app sees (no message lost, duplicated or reordered, the
//! transport it ends on, whether it climbs back) and prints one `LADDER-FIGURES` line: the
//! figures in RELIABILITY.md come from these lines.
//!
//! Run by `make test-browser` (scripts/with-servers starts the server and the proxy:
//! `RTLINK_LADDER_SERVER`, `RTLINK_LADDER_PROXY`, `RTLINK_LADDER_CONTROL`). The scenarios run one
//! at a time (wasm-bindgen-test runs tests sequentially), each clearing the faults first.
//!
//! Every wait is for a condition (a state, a proxy counter, a message), bounded; the bounds are
//! the client's own deadlines plus slack for a loaded machine, and the figures printed are the
//! measured times, not the bounds.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod browser_util;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use browser_util::*;
use js_sys::{Object, Reflect, JSON};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Probes up the ladder about this often in these scenarios (the default is a minute).
const PROBE_INTERVAL_MS: f64 = 1_000.0;
/// The client's default first-frame deadline (`Config::first_frame_timeout_ms`): an SSE stream
/// without `welcome` by then is held by a buffering proxy; a probe without one is given up.
const FIRST_FRAME_MS: f64 = 8_000.0;
/// `--ping-interval` of the servers scripts/with-servers starts.
const PING_INTERVAL_MS: f64 = 2_000.0;
/// The heartbeat grace the blackhole scenario configures: silence beyond ping + grace is death.
const HEARTBEAT_GRACE_MS: f64 = 4_000.0;
/// The client's defaults for a heartbeat timer that fires late (a loaded machine): it pings and
/// waits this window before declaring the transport dead (`Config::liveness_probe_window_ms`,
/// `late_timer_threshold_ms`).
const LIVENESS_WINDOW_MS: f64 = 5_000.0;
const LATE_TIMER_MS: f64 = 1_000.0;
/// The backoff the test clients use (browser_util::options): retries within a second.
const BACKOFF_CAP_MS: f64 = 1_000.0;
/// Room for a loaded 2-core machine on top of a deadline.
const SLACK_MS: f64 = 3_000.0;

fn now() -> f64 {
    js_sys::Date::now()
}

/// A request to the proxy's control API; returns its JSON answer.
async fn control(method: &str, path: &str, body: Option<&str>) -> JsValue {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(b) = body {
        // text/plain: no CORS preflight; the API reads JSON whatever the content type.
        init.set_body(&JsValue::from_str(b));
    }
    let url = format!("{}{path}", server("ladder-control"));
    let w = web_sys::window().unwrap();
    let resp: web_sys::Response = JsFuture::from(w.fetch_with_str_and_init(&url, &init))
        .await
        .unwrap()
        .unchecked_into();
    assert_eq!(resp.status(), 200, "{method} {path} {body:?}");
    JsFuture::from(resp.json().unwrap()).await.unwrap()
}

async fn set_faults(faults: &str) {
    control("POST", "/faults", Some(faults)).await;
}

async fn clear_faults() {
    control("DELETE", "/faults", None).await;
}

/// One of the proxy's counters (see the faultkit crate docs).
async fn counter(name: &str) -> u64 {
    get(
        &get(&control("GET", "/faults", None).await, "counters"),
        name,
    )
    .as_f64()
    .unwrap_or(0.0) as u64
}

/// Waits (bounded) until the proxy's counter `name` reaches `at_least`.
async fn wait_counter(what: &str, name: &str, at_least: u64, within_ms: f64) {
    let start = now();
    loop {
        let n = counter(name).await;
        if n >= at_least {
            return;
        }
        assert!(
            now() - start < within_ms,
            "timed out after {within_ms} ms waiting for {what} ({name} = {n}, want {at_least})"
        );
        sleep(50).await;
    }
}

/// Every value a listener received, with when (ms, wall clock).
#[derive(Clone, Default)]
struct Timed(Rc<RefCell<Vec<(f64, JsValue)>>>);

impl Timed {
    fn listener(&self) -> js_sys::Function {
        let log = self.0.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |v| log.borrow_mut().push((now(), v)))
            .into_js_value()
            .unchecked_into()
    }
    fn values(&self) -> Vec<(f64, JsValue)> {
        self.0.borrow().clone()
    }
    fn len(&self) -> usize {
        self.0.borrow().len()
    }
    /// When a state `state` (on `transport`, if given) was first reported at or after `since`.
    fn first(&self, since: f64, state: &str, transport: Option<&str>) -> Option<f64> {
        self.values().into_iter().find_map(|(t, s)| {
            let hit = t >= since
                && get(&s, "state").as_string().as_deref() == Some(state)
                && transport
                    .is_none_or(|tr| get(&s, "transport").as_string().as_deref() == Some(tr));
            hit.then_some(t)
        })
    }
    /// When the first state other than `open` was reported at or after `since`.
    fn first_not_open(&self, since: f64) -> Option<f64> {
        self.values().into_iter().find_map(|(t, s)| {
            (t >= since && get(&s, "state").as_string().as_deref() != Some("open")).then_some(t)
        })
    }
    fn is_open_on(&self, transport: &str) -> bool {
        self.values().last().is_some_and(|(_, s)| {
            get(s, "state").as_string().as_deref() == Some("open")
                && get(s, "transport").as_string().as_deref() == Some(transport)
        })
    }
    /// The transports the states named, consecutive repeats folded.
    fn transports(&self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for (_, s) in self.values() {
            if let Some(t) = get(&s, "transport").as_string() {
                if seen.last() != Some(&t) {
                    seen.push(t);
                }
            }
        }
        seen
    }
    /// `retryInMs` of every `backing-off` state.
    fn retry_delays(&self) -> Vec<f64> {
        self.values()
            .iter()
            .filter(|(_, s)| get(s, "state").as_string().as_deref() == Some("backing-off"))
            .filter_map(|(_, s)| get(s, "retryInMs").as_f64())
            .collect()
    }
}

async fn wait_until(what: &str, within_ms: f64, cond: impl Fn() -> bool) {
    let start = now();
    while !cond() {
        assert!(
            now() - start < within_ms,
            "timed out after {within_ms} ms waiting for {what}"
        );
        sleep(25).await;
    }
}

fn ms(v: f64) -> String {
    format!("{} ms", v.round())
}

/// A subscriber through the proxy, a publisher connected to the server directly publishing every
/// 100 ms once the subscriber is subscribed, and what each saw.
struct Scene {
    name: &'static str,
    subscriber: RealtimeClient,
    _room: Room,
    states: Timed,
    remembered: Recorder,
    messages: Timed,
    resyncs: Recorder,
    publisher: RealtimeClient,
    acked: Rc<RefCell<Vec<u64>>>,
    stop: Rc<Cell<bool>>,
    stopped: Rc<Cell<bool>>,
    started: f64,
}

impl Scene {
    /// Sets `faults` (proxy control JSON), then connects the subscriber through the proxy.
    /// `heartbeat_grace_ms` overrides the client's default grace.
    async fn start(name: &'static str, faults: &str, heartbeat_grace_ms: Option<f64>) -> Scene {
        clear_faults().await;
        let direct = server("ladder");
        let room_name = unique_room("ladder");
        let (publisher, _s) = connected(&direct, "publisher", Some(&["websocket"])).await;
        let tx = publisher.room(&room_name, JsValue::UNDEFINED).unwrap();
        set_faults(faults).await;
        let opts = options_via(&server("ladder-proxy"), &direct, "subscriber", None);
        Reflect::set(&opts, &"probeIntervalMs".into(), &PROBE_INTERVAL_MS.into()).unwrap();
        if let Some(grace) = heartbeat_grace_ms {
            let heartbeat = Object::new();
            Reflect::set(&heartbeat, &"graceMs".into(), &grace.into()).unwrap();
            Reflect::set(&opts, &"heartbeat".into(), &heartbeat).unwrap();
        }
        let subscriber = RealtimeClient::new(opts).unwrap();
        let (states, remembered) = (Timed::default(), Recorder::default());
        let _ = subscriber.on("state", states.listener()).unwrap();
        let _ = subscriber.on("transport", remembered.listener()).unwrap();
        let started = now();
        subscriber.connect();
        let room = subscriber.room(&room_name, JsValue::UNDEFINED).unwrap();
        let (messages, resyncs, subscribed) =
            (Timed::default(), Recorder::default(), Recorder::default());
        let _ = room.on("message", messages.listener()).unwrap();
        let _ = room.on("resync", resyncs.listener()).unwrap();
        let _ = room.on("subscribed", subscribed.listener()).unwrap();
        // Publish once the subscriber is in the room (it joins without history): from then on,
        // every acked message must reach it, whatever happens to its transport.
        let (acked, stop, stopped) = (
            Rc::new(RefCell::new(Vec::new())),
            Rc::new(Cell::new(false)),
            Rc::new(Cell::new(false)),
        );
        {
            let (acked, stop, stopped, subscribed) = (
                acked.clone(),
                stop.clone(),
                stopped.clone(),
                subscribed.clone(),
            );
            wasm_bindgen_futures::spawn_local(async move {
                while subscribed.values().is_empty() && !stop.get() {
                    sleep(25).await;
                }
                let mut n = 0;
                while !stop.get() {
                    n += 1;
                    if let Ok(ack) =
                        JsFuture::from(tx.publish(JsValue::from_str(&format!("m{n}")))).await
                    {
                        acked
                            .borrow_mut()
                            .push(get(&ack, "offset").as_f64().unwrap() as u64);
                    }
                    sleep(100).await;
                }
                stopped.set(true);
            });
        }
        Scene {
            name,
            subscriber,
            _room: room,
            states,
            remembered,
            messages,
            resyncs,
            publisher,
            acked,
            stop,
            stopped,
            started,
        }
    }

    /// Waits until the subscriber is open on `transport` (at or after `since`); returns when.
    async fn wait_open_on(&self, transport: &str, within_ms: f64, since: f64) -> f64 {
        let what = format!("{}: open on {transport}", self.name);
        let start = now();
        while self.states.first(since, "open", Some(transport)).is_none() {
            let path = self.states.transports();
            assert!(
                now() - start < within_ms,
                "timed out after {within_ms} ms waiting for {what} (transports so far {path:?})"
            );
            sleep(25).await;
        }
        self.states.first(since, "open", Some(transport)).unwrap()
    }

    /// Waits until `n` more messages arrived than had at the call.
    async fn wait_messages(&self, n: usize, within_ms: f64) {
        let target = self.messages.len() + n;
        let what = format!("{}: {n} more messages", self.name);
        wait_until(&what, within_ms, || self.messages.len() >= target).await;
    }

    /// Stops publishing, waits for every acked message at the subscriber, checks it saw each
    /// once and in order, prints the figures, and closes both clients.
    async fn finish(self, figures: &str) {
        let what = format!("{}: 10 publishes acked", self.name);
        wait_until(&what, 20_000.0, || self.acked.borrow().len() >= 10).await;
        self.stop.set(true);
        wait_until("the publisher to stop", 20_000.0, || self.stopped.get()).await;
        let acked = self.acked.borrow().clone();
        let last = *acked.iter().max().unwrap();
        let offsets = || -> Vec<u64> {
            self.messages
                .values()
                .iter()
                .map(|(_, m)| get(m, "offset").as_f64().unwrap() as u64)
                .collect()
        };
        let what = format!("{}: every acked message at the subscriber", self.name);
        wait_until(&what, 20_000.0, || offsets().iter().any(|&o| o >= last)).await;
        let got = offsets();
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        let duplicated = got.len() - unique.len();
        let reordered = got.windows(2).filter(|w| w[1] < w[0]).count();
        let lost = acked
            .iter()
            .filter(|o| unique.binary_search(o).is_err())
            .count();
        let ended_on = transport_of(&self.subscriber);
        let line = format!(
            "LADDER-FIGURES {} | {figures} | ended on {ended_on} | path {} | {}/{} acked messages delivered: lost {lost}, duplicated {duplicated}, reordered {reordered} | resyncs {}",
            self.name,
            self.states.transports().join(" > "),
            acked.iter().filter(|o| unique.binary_search(o).is_ok()).count(),
            acked.len(),
            self.resyncs.values().len(),
        );
        web_sys::console::log_1(&line.clone().into());
        assert_eq!((lost, duplicated, reordered), (0, 0, 0), "{line}");
        assert!(
            self.resyncs.values().is_empty(),
            "history was never gone: {line}"
        );
        self.subscriber.close();
        self.publisher.close();
        clear_faults().await;
    }
}

#[wasm_bindgen_test]
async fn websocket_upgrades_refused_land_on_sse_then_climb_back() {
    let refused_before = counter("refused_websocket").await;
    let scene = Scene::start(
        "WebSocket upgrades refused (502)",
        r#"{"refuse_websocket": true}"#,
        None,
    )
    .await;
    scene.wait_open_on("sse", 20_000.0, scene.started).await;
    let detection = scene
        .states
        .first(scene.started, "connecting", Some("sse"))
        .unwrap()
        - scene.started;
    // Two refused upgrades step down (Config::step_down_after); stay on SSE until a probe of
    // the WebSocket was refused too (it must cost nothing), with messages flowing.
    let refused = counter("refused_websocket").await - refused_before;
    assert_eq!(refused, 2, "{refused} refusals before stepping down");
    wait_counter(
        "a refused WebSocket probe",
        "refused_websocket",
        refused_before + 3,
        10_000.0,
    )
    .await;
    scene.wait_messages(3, 10_000.0).await;
    assert!(
        scene.states.is_open_on("sse"),
        "a refused probe cost the working SSE transport"
    );
    let lifted = now();
    clear_faults().await;
    let back = scene.wait_open_on("websocket", 20_000.0, lifted).await;
    assert_eq!(scene.states.transports(), ["websocket", "sse", "websocket"]);
    let remembered: Vec<String> = scene
        .remembered
        .values()
        .iter()
        .filter_map(|t| t.as_string())
        .collect();
    assert_eq!(
        remembered.last().map(String::as_str),
        Some("websocket"),
        "{remembered:?}"
    );
    let figures = format!(
        "detection {} (2 refused upgrades, step_down_after 2) | recovery {} after the fault was removed (probe interval {}) | climbed back yes",
        ms(detection),
        ms(back - lifted),
        ms(PROBE_INTERVAL_MS)
    );
    scene.finish(&figures).await;
}

#[wasm_bindgen_test]
async fn buffered_sse_lands_on_long_polling_then_climbs_back() {
    let faults = r#"{"refuse_websocket": true, "buffer_sse": true}"#;
    let scene = Scene::start(
        "SSE held by a buffering proxy (+ upgrades refused)",
        faults,
        None,
    )
    .await;
    let bound = 2.0 * BACKOFF_CAP_MS + FIRST_FRAME_MS + BACKOFF_CAP_MS + 2.0 * SLACK_MS;
    scene
        .wait_open_on("long-polling", bound, scene.started)
        .await;
    let on_sse = scene
        .states
        .first(scene.started, "connecting", Some("sse"))
        .unwrap();
    let detection = scene
        .states
        .first(on_sse, "connecting", Some("long-polling"))
        .unwrap()
        - on_sse;
    // The held stream is given up at the first-frame deadline, not before.
    assert!(
        detection >= FIRST_FRAME_MS,
        "gave up on SSE after {detection} ms"
    );
    assert!(
        detection <= FIRST_FRAME_MS + BACKOFF_CAP_MS + SLACK_MS,
        "gave up on SSE after {detection} ms"
    );
    scene.wait_messages(3, 10_000.0).await;
    // Lift the fault while a probe of SSE is held: that probe is given up at its deadline, the
    // next one gets through, then the WebSocket probe.
    let sse_opens = counter("sse_opens").await;
    wait_counter("a probe of SSE", "sse_opens", sse_opens + 1, 10_000.0).await;
    let lifted = now();
    clear_faults().await;
    let back = scene
        .wait_open_on(
            "websocket",
            FIRST_FRAME_MS + 4.0 * PROBE_INTERVAL_MS + 2.0 * SLACK_MS,
            lifted,
        )
        .await;
    let path = scene.states.transports();
    assert!(
        path.ends_with(&["long-polling".into(), "sse".into(), "websocket".into()]),
        "{path:?}"
    );
    let figures = format!(
        "detection {} on SSE (first-frame deadline {}) | recovery {} after the fault was removed, a held probe pending (long polling > SSE > WebSocket) | climbed back yes",
        ms(detection),
        ms(FIRST_FRAME_MS),
        ms(back - lifted)
    );
    scene.finish(&figures).await;
}

/// Every opening request refused `limit` times with `status` and `Retry-After: 1`, as an
/// overloaded server or its load balancer does, then admitted again: the client waits out each
/// delay (jittered in [d, 2d], PROTOCOL.md) and opens on the WebSocket, never stepping down.
async fn overload_never_steps_down(name: &'static str, status: u16) {
    let limit = 5;
    let faults =
        format!(r#"{{"reject": {{"status": {status}, "retry_after_s": 1, "limit": {limit}}}}}"#);
    let rejected_before = counter("rejected").await;
    let scene = Scene::start(name, &faults, None).await;
    let open = scene
        .wait_open_on(
            "websocket",
            limit as f64 * 2_000.0 + 2.0 * SLACK_MS,
            scene.started,
        )
        .await;
    assert_eq!(counter("rejected").await - rejected_before, limit);
    assert_eq!(
        scene.states.transports(),
        ["websocket"],
        "never a step down"
    );
    let remembered: Vec<String> = scene
        .remembered
        .values()
        .iter()
        .filter_map(|t| t.as_string())
        .collect();
    assert!(
        remembered.iter().all(|t| t == "websocket"),
        "no fallback remembered: {remembered:?}"
    );
    let delays = scene.states.retry_delays();
    assert_eq!(
        delays.len(),
        limit as usize,
        "one wait per refusal: {delays:?}"
    );
    assert!(
        delays.iter().all(|d| (1_000.0..=2_000.0).contains(d)),
        "each wait in [1 s, 2 s]: {delays:?}"
    );
    let mut distinct = delays.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "server-given delays are jittered: {delays:?}"
    );
    let figures = format!(
        "{limit} refusals, waits {:?} ms (Retry-After 1 s, window [1000, 2000]) | open {} after start, no step down, nothing remembered but websocket | climbed back n/a",
        delays.iter().map(|d| d.round() as u64).collect::<Vec<_>>(),
        ms(open - scene.started)
    );
    scene.finish(&figures).await;
}

#[wasm_bindgen_test]
async fn overload_503_on_opening_never_steps_down() {
    overload_never_steps_down("503 + Retry-After on opening", 503).await;
}

#[wasm_bindgen_test]
async fn overload_429_on_opening_never_steps_down() {
    overload_never_steps_down("429 + Retry-After on opening", 429).await;
}

#[wasm_bindgen_test]
async fn a_probe_behind_a_buffering_proxy_never_costs_the_working_transport() {
    let faults = r#"{"refuse_websocket": true, "buffer_sse": true}"#;
    let scene = Scene::start("probes held by a buffering proxy (#8.6)", faults, None).await;
    let bound = 2.0 * BACKOFF_CAP_MS + FIRST_FRAME_MS + BACKOFF_CAP_MS + 2.0 * SLACK_MS;
    let open = scene
        .wait_open_on("long-polling", bound, scene.started)
        .await;
    let states_then = scene.states.len();
    let sse_opens = counter("sse_opens").await;
    // One probe of SSE at a time, each held by the proxy until the client gives up on it at the
    // first-frame deadline: a third one reaching the proxy means two were given up. The long
    // polling transport must carry the session all along, untouched.
    let probes = 3;
    let within = probes as f64 * (FIRST_FRAME_MS + 1.25 * PROBE_INTERVAL_MS) + 2.0 * SLACK_MS;
    let watched = now();
    wait_counter("three SSE probes", "sse_opens", sse_opens + probes, within).await;
    let watched = now() - watched;
    let later: Vec<String> = scene.states.values()[states_then..]
        .iter()
        .map(|(_, s)| String::from(JSON::stringify(s).unwrap()))
        .collect();
    assert!(
        later.is_empty(),
        "the long-polling transport was never replaced or dropped: {later:?}"
    );
    assert!(scene.states.is_open_on("long-polling"));
    scene.wait_messages(3, 10_000.0).await;
    let figures = format!(
        "on long polling {} after start | {} probes of SSE held and given up in {} (first-frame deadline {}), working transport dropped 0 times | climbed back n/a (fault kept)",
        ms(open - scene.started),
        probes - 1,
        ms(watched),
        ms(FIRST_FRAME_MS)
    );
    scene.finish(&figures).await;
}

#[wasm_bindgen_test]
async fn blackhole_is_detected_within_the_heartbeat_deadline_and_recovers() {
    let scene = Scene::start(
        "blackhole (both ways, sockets kept open)",
        "{}",
        Some(HEARTBEAT_GRACE_MS),
    )
    .await;
    scene
        .wait_open_on("websocket", 10_000.0, scene.started)
        .await;
    scene.wait_messages(5, 10_000.0).await;
    let deadline = PING_INTERVAL_MS + HEARTBEAT_GRACE_MS;
    let holed = now();
    set_faults(r#"{"blackhole": true}"#).await;
    let bound = deadline + LATE_TIMER_MS + LIVENESS_WINDOW_MS + SLACK_MS;
    wait_until("the blackhole to be detected", bound, || {
        scene.states.first_not_open(holed).is_some()
    })
    .await;
    let detected = scene.states.first_not_open(holed).unwrap();
    let detection = detected - holed;
    // The last frame before the blackhole arrived at most one ping interval earlier, so the
    // deadline cannot pass sooner than the grace after it started.
    assert!(
        detection >= HEARTBEAT_GRACE_MS,
        "detected after {detection} ms: not by the heartbeat"
    );
    // Keep it until an attempt into the blackhole was abandoned (its ticket step hangs until
    // the deadline: the server is unreachable, which says nothing about the transport) and the
    // next one started.
    let attempts = || {
        scene
            .states
            .values()
            .iter()
            .filter(|(t, s)| {
                *t > detected && get(s, "state").as_string().as_deref() == Some("connecting")
            })
            .count()
    };
    wait_until(
        "a second reconnect attempt into the blackhole",
        FIRST_FRAME_MS + BACKOFF_CAP_MS + 2.0 * SLACK_MS,
        || attempts() >= 2,
    )
    .await;
    let lifted = now();
    clear_faults().await;
    // The attempt in the blackhole is abandoned at the latest at the ticket step's deadline.
    let back = scene
        .wait_open_on(
            "websocket",
            FIRST_FRAME_MS + BACKOFF_CAP_MS + 2.0 * SLACK_MS,
            lifted,
        )
        .await;
    assert_eq!(
        scene.states.transports(),
        ["websocket"],
        "a blackhole is not a blocked transport"
    );
    let figures = format!(
        "detection {} (heartbeat deadline {} = ping {} + grace {}) | blackhole {} | recovery {} after it was lifted | climbed back n/a (never stepped down)",
        ms(detection),
        ms(deadline),
        ms(PING_INTERVAL_MS),
        ms(HEARTBEAT_GRACE_MS),
        ms(lifted - holed),
        ms(back - lifted)
    );
    scene.finish(&figures).await;
}

#[wasm_bindgen_test]
async fn websocket_killed_after_the_upgrade_lands_on_sse_then_climbs_back() {
    let killed_before = counter("killed_after_upgrade").await;
    let scene = Scene::start(
        "WebSocket killed right after 101",
        r#"{"kill_after_upgrade_ms": 0}"#,
        None,
    )
    .await;
    scene.wait_open_on("sse", 20_000.0, scene.started).await;
    let detection = scene
        .states
        .first(scene.started, "connecting", Some("sse"))
        .unwrap()
        - scene.started;
    // A probe of the WebSocket killed the same way must cost nothing.
    let killed = counter("killed_after_upgrade").await;
    wait_counter(
        "a killed WebSocket probe",
        "killed_after_upgrade",
        killed + 1,
        10_000.0,
    )
    .await;
    let killed = killed - killed_before;
    scene.wait_messages(3, 10_000.0).await;
    assert!(
        scene.states.is_open_on("sse"),
        "a killed probe cost the working SSE transport"
    );
    let lifted = now();
    clear_faults().await;
    let back = scene.wait_open_on("websocket", 20_000.0, lifted).await;
    assert_eq!(scene.states.transports(), ["websocket", "sse", "websocket"]);
    let figures = format!(
        "detection {} ({killed} upgrade(s) killed before the first frame) | recovery {} after the fault was removed | climbed back yes",
        ms(detection),
        ms(back - lifted)
    );
    scene.finish(&figures).await;
}
