//! What the browser test files share: the package's JS API as the tests call it, the servers
//! `scripts/with-servers` started, waiting on conditions (never fixed sleeps for a result),
//! reading JS values that may not be there yet, demo tokens, and recorders for listener values.
#![allow(dead_code)] // each test file uses part of it

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

// The public API of pkg/rtlink.js (the hand-written façade over the wasm module), bound with the
// same method names and signatures as its .d.ts: what the tests drive is what users get.
#[wasm_bindgen(module = "/tests/browser_util/facade.js")]
extern "C" {
    #[wasm_bindgen(js_name = load)]
    fn load_package() -> Promise;

    pub type RealtimeClient;
    #[wasm_bindgen(catch, js_name = newClient)]
    fn new_client(options: JsValue) -> Result<RealtimeClient, JsValue>;
    #[wasm_bindgen(method, catch)]
    pub fn on(this: &RealtimeClient, event: &str, listener: Function) -> Result<Function, JsValue>;
    #[wasm_bindgen(method)]
    pub fn connect(this: &RealtimeClient);
    #[wasm_bindgen(method)]
    pub fn close(this: &RealtimeClient);
    #[wasm_bindgen(method, catch)]
    pub fn room(this: &RealtimeClient, name: &str, options: JsValue) -> Result<Room, JsValue>;
    #[wasm_bindgen(method, getter)]
    pub fn state(this: &RealtimeClient) -> JsValue;

    pub type Room;
    #[wasm_bindgen(method, getter)]
    pub fn name(this: &Room) -> String;
    #[wasm_bindgen(method, catch, js_name = on)]
    pub fn on(this: &Room, event: &str, listener: Function) -> Result<Function, JsValue>;
    #[wasm_bindgen(method)]
    pub fn publish(this: &Room, payload: JsValue) -> Promise;
    #[wasm_bindgen(method)]
    pub fn leave(this: &Room);
    #[wasm_bindgen(method, getter)]
    pub fn presence(this: &Room) -> Presence;
    #[wasm_bindgen(method, getter)]
    pub fn typing(this: &Room) -> Typing;

    pub type Presence;
    #[wasm_bindgen(method, catch)]
    pub fn set(this: &Presence, meta: JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(method)]
    pub fn list(this: &Presence) -> JsValue;
    #[wasm_bindgen(method, catch, js_name = on)]
    pub fn on(this: &Presence, event: &str, listener: Function) -> Result<Function, JsValue>;

    pub type Typing;
    #[wasm_bindgen(method)]
    pub fn keystroke(this: &Typing);
    #[wasm_bindgen(method)]
    pub fn stop(this: &Typing);
    #[wasm_bindgen(method)]
    pub fn list(this: &Typing) -> JsValue;
    #[wasm_bindgen(method, catch, js_name = on)]
    pub fn on(this: &Typing, event: &str, listener: Function) -> Result<Function, JsValue>;

    /// Live DOM listeners and owned callbacks of every client.
    #[wasm_bindgen(js_name = liveListeners)]
    pub fn live_listeners() -> u32;
}

impl RealtimeClient {
    /// `new RealtimeClient(options)` (after [`ready`]).
    pub fn new(options: JsValue) -> Result<RealtimeClient, JsValue> {
        new_client(options)
    }
}

/// Loads pkg/rtlink.js and its wasm module once; every test awaits it before using the API.
pub async fn ready() {
    JsFuture::from(load_package())
        .await
        .expect("pkg/rtlink.js loads (run `make package` first)");
}

pub fn server(var: &str) -> String {
    let url = match var {
        "main" => option_env!("RTLINK_SERVER"),
        "no-ws" => option_env!("RTLINK_SERVER_NO_WS"),
        "poll-only" => option_env!("RTLINK_SERVER_POLL_ONLY"),
        // The ladder scenarios: a server of their own, the fault proxy in front of it, and the
        // proxy's control API.
        "ladder" => option_env!("RTLINK_LADDER_SERVER"),
        "ladder-proxy" => option_env!("RTLINK_LADDER_PROXY"),
        "ladder-control" => option_env!("RTLINK_LADDER_CONTROL"),
        // Two nodes of one cluster (one Redis, one secret); node A can be stopped for good.
        "node-a" => option_env!("RTLINK_NODE_A"),
        "node-b" => option_env!("RTLINK_NODE_B"),
        _ => None,
    };
    url.expect("run the browser tests with `make test-browser` (it starts the servers)")
        .to_string()
}

pub async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        let w = web_sys::window().unwrap();
        w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .unwrap();
    });
    JsFuture::from(p).await.unwrap();
}

/// Polls `cond` every 25 ms for up to `ms`; panics with `what` on timeout.
pub async fn wait_for(what: &str, ms: i32, mut cond: impl FnMut() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < ms, "timed out after {ms} ms waiting for {what}");
        sleep(25).await;
        waited += 25;
    }
}

/// `v[key]`, or undefined when `v` is not an object (yet): a test must never throw on a value
/// that has not arrived.
pub fn get(v: &JsValue, key: &str) -> JsValue {
    if !v.is_object() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(v, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

pub async fn demo_token(base: &str, name: &str) -> Result<JsValue, JsValue> {
    let init = web_sys::RequestInit::new();
    init.set_method("POST");
    init.set_body(&JsValue::from_str(&format!("{{\"name\":\"{name}\"}}")));
    let headers = web_sys::Headers::new()?;
    headers.set("content-type", "application/json")?;
    init.set_headers(&headers);
    let w = web_sys::window().unwrap();
    let resp: web_sys::Response =
        JsFuture::from(w.fetch_with_str_and_init(&format!("{base}/v1/demo-token"), &init))
            .await?
            .dyn_into()?;
    let body = JsFuture::from(resp.json()?).await?;
    Ok(get(&body, "token"))
}

/// Options with a `getToken` that asks the demo endpoint for a token for `name` once, and then
/// returns that token again, as a real app returns its signed-in user's token: one client is
/// one user. (Every demo token is a new user.)
pub fn options(base: &str, name: &str, transports: Option<&[&str]>) -> JsValue {
    options_via(base, base, name, transports)
}

/// [`options`] for a client that connects to `url` (e.g. through a proxy) and gets its token
/// from the server at `token_base`.
pub fn options_via(
    url: &str,
    token_base: &str,
    name: &str,
    transports: Option<&[&str]>,
) -> JsValue {
    let (b, n) = (token_base.to_string(), name.to_string());
    let cached: Rc<RefCell<Option<JsValue>>> = Rc::default();
    let get_token = Closure::<dyn FnMut() -> Promise>::new(move || {
        let (b, n, cached) = (b.clone(), n.clone(), cached.clone());
        wasm_bindgen_futures::future_to_promise(async move {
            if let Some(token) = cached.borrow().clone() {
                return Ok(token);
            }
            let token = demo_token(&b, &n).await?;
            *cached.borrow_mut() = Some(token.clone());
            Ok(token)
        })
    });
    options_with_token(url, get_token.into_js_value(), transports)
}

/// Options with the given `getToken`.
pub fn options_with_token(base: &str, get_token: JsValue, transports: Option<&[&str]>) -> JsValue {
    let o = Object::new();
    Reflect::set(&o, &"url".into(), &base.into()).unwrap();
    Reflect::set(&o, &"getToken".into(), &get_token).unwrap();
    if let Some(ts) = transports {
        let arr: js_sys::Array = ts.iter().map(|t| JsValue::from_str(t)).collect();
        Reflect::set(&o, &"transports".into(), &arr).unwrap();
    }
    // Fast retries keep the restart test short.
    let backoff = Object::new();
    Reflect::set(&backoff, &"baseMs".into(), &200.into()).unwrap();
    Reflect::set(&backoff, &"capMs".into(), &1000.into()).unwrap();
    Reflect::set(&o, &"backoff".into(), &backoff).unwrap();
    Reflect::set(&o, &"rememberTransport".into(), &false.into()).unwrap();
    o.into()
}

/// Records every value a listener receives.
#[derive(Clone, Default)]
pub struct Recorder(pub Rc<RefCell<Vec<JsValue>>>);

impl Recorder {
    pub fn listener(&self) -> Function {
        let log = self.0.clone();
        Closure::<dyn FnMut(JsValue)>::new(move |v| log.borrow_mut().push(v))
            .into_js_value()
            .unchecked_into()
    }
    pub fn values(&self) -> Vec<JsValue> {
        self.0.borrow().clone()
    }
    pub fn last(&self) -> Option<JsValue> {
        self.0.borrow().last().cloned()
    }
}

pub fn state_is(states: &Recorder, state: &str) -> bool {
    states
        .last()
        .is_some_and(|s| get(&s, "state").as_string().as_deref() == Some(state))
}

pub fn transport_of(client: &RealtimeClient) -> String {
    get(&client.state(), "transport")
        .as_string()
        .unwrap_or_default()
}

pub fn offsets(messages: &Recorder) -> Vec<u64> {
    messages
        .values()
        .iter()
        .map(|m| get(m, "offset").as_f64().unwrap() as u64)
        .collect()
}

pub fn unique_room(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

pub async fn connected(
    base: &str,
    name: &str,
    transports: Option<&[&str]>,
) -> (RealtimeClient, Recorder) {
    ready().await;
    let client = RealtimeClient::new(options(base, name, transports)).unwrap();
    let states = Recorder::default();
    let _ = client.on("state", states.listener()).unwrap();
    client.connect();
    wait_for(&format!("{name} to open"), 10_000, || {
        state_is(&states, "open")
    })
    .await;
    (client, states)
}

pub async fn publish(room: &Room, text: &str) -> JsValue {
    JsFuture::from(room.publish(JsValue::from_str(text)))
        .await
        .expect("publish acked")
}
