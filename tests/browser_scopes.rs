//! The client beyond the window: pkg/rtlink.js running in a dedicated Worker and in a
//! SharedWorker (tests/browser_util/worker.js), where there is no `window` or `document` and the
//! clock, `fetch`, `crypto`, timers and the transports come from the worker's global scope. The
//! worker connects, joins a room, publishes and receives; a client on the page sees its messages
//! and the worker sees the page's.
//!
//! Run by `make test-browser` (scripts/with-servers: `RTLINK_SERVER`).
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod browser_util;

use browser_util::*;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(module = "/tests/browser_util/scopes.js")]
extern "C" {
    type WorkerRun;
    #[wasm_bindgen(js_name = startWorker)]
    fn start_worker(shared: bool, url: &str, name: &str, room: &str) -> WorkerRun;
    #[wasm_bindgen(method, getter)]
    fn log(this: &WorkerRun) -> js_sys::Array;
    #[wasm_bindgen(method)]
    fn stop(this: &WorkerRun);
}

impl WorkerRun {
    /// The reports of `kind` so far.
    fn reports(&self, kind: &str) -> Vec<JsValue> {
        self.log()
            .iter()
            .filter(|m| get(m, "type").as_string().as_deref() == Some(kind))
            .collect()
    }

    fn payloads(&self) -> Vec<String> {
        self.reports("message")
            .iter()
            .filter_map(|m| get(m, "payload").as_string())
            .collect()
    }

    fn failure(&self) -> Option<String> {
        self.reports("error").first().map(|e| {
            format!(
                "{}: {}",
                as_text(&get(e, "code")),
                as_text(&get(e, "message"))
            )
        })
    }
}

/// Waits until `cond` holds for the worker's reports; fails at once on a reported error, and says
/// what the worker reported on a timeout.
async fn wait_worker(worker: &WorkerRun, what: &str, ms: i32, cond: impl Fn(&WorkerRun) -> bool) {
    let mut waited = 0;
    while !cond(worker) {
        let log = js_sys::JSON::stringify(&worker.log())
            .map(String::from)
            .unwrap_or_default();
        assert!(
            waited < ms && worker.failure().is_none(),
            "{what}: not within {ms} ms; the worker reported {log}"
        );
        sleep(25).await;
        waited += 25;
    }
}

fn as_text(v: &JsValue) -> String {
    v.as_string().unwrap_or_default()
}

async fn runs_in(shared: bool) {
    let base = server("main");
    let room_name = unique_room(if shared { "shared-worker" } else { "worker" });
    let (page, _states) = connected(&base, "page", None).await;
    let room = page.room(&room_name, JsValue::UNDEFINED).unwrap();
    let seen = Recorder::default();
    let _ = room.on("message", seen.listener()).unwrap();
    let subscribed = Recorder::default();
    let _ = room.on("subscribed", subscribed.listener()).unwrap();
    wait_for("page subscribed", 5_000, || !subscribed.values().is_empty()).await;

    let worker = start_worker(shared, &base, &format!("worker-{room_name}"), &room_name);
    wait_worker(&worker, "the worker subscribed", 15_000, |w| {
        !w.reports("subscribed").is_empty()
    })
    .await;
    let scope = worker.reports("scope");
    assert_eq!(
        as_text(&get(&scope[0], "window")),
        "undefined",
        "no window in a worker"
    );
    assert_eq!(as_text(&get(&scope[0], "document")), "undefined");
    assert_eq!(get(&scope[0], "shared").as_bool(), Some(shared));
    let open = worker
        .reports("state")
        .iter()
        .any(|s| as_text(&get(s, "state")) == "open");
    assert!(open, "the worker's client opened");

    // The worker publishes worker-1..3 once subscribed: acked there, delivered here and there.
    wait_worker(&worker, "3 acks in the worker", 10_000, |w| {
        w.reports("acked").len() == 3
    })
    .await;
    publish(&room, "from-page").await;
    let all = ["worker-1", "worker-2", "worker-3", "from-page"];
    wait_for("the page sees the worker's messages", 10_000, || {
        seen.values().len() == 4
    })
    .await;
    wait_worker(&worker, "the worker sees every message", 10_000, |w| {
        w.payloads().len() == 4
    })
    .await;
    let mut from_page: Vec<String> = seen
        .values()
        .iter()
        .map(|m| as_text(&get(m, "payload")))
        .collect();
    let mut in_worker = worker.payloads();
    from_page.sort();
    in_worker.sort();
    let mut expected: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(from_page, expected);
    assert_eq!(in_worker, expected);
    // One offset order on both sides.
    let offsets: Vec<u64> = worker
        .reports("message")
        .iter()
        .map(|m| get(m, "offset").as_f64().unwrap() as u64)
        .collect();
    assert_eq!(offsets, vec![1, 2, 3, 4]);
    worker.stop();
    page.close();
}

#[wasm_bindgen_test]
async fn the_client_runs_in_a_dedicated_worker() {
    runs_in(false).await;
}

#[wasm_bindgen_test]
async fn the_client_runs_in_a_shared_worker() {
    runs_in(true).await;
}
