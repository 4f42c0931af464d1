//! fetch helpers shared by the transports: the ticket exchange, upstream POSTs and error mapping.

use alloc::boxed::Box;
use alloc::string::String;

use js_sys::{Object, Promise};
use wasm_bindgen::prelude::*;

use crate::core::json::{self, Json};
use crate::core::text::{concat, dec, parse_dec, push_json_str};
use crate::core::ServerFrame;
use crate::wasm::get;
use crate::wasm::listener::on_settle;

#[wasm_bindgen]
extern "C" {
    /// The global `fetch` (a page's or a worker's).
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(url: &str, init: &JsValue) -> Promise;

    type Response;
    #[wasm_bindgen(method)]
    fn text(this: &Response) -> Promise;
    #[wasm_bindgen(method, getter)]
    fn headers(this: &Response) -> Headers;

    type Headers;
    #[wasm_bindgen(method, js_name = get)]
    fn get_header(this: &Headers, name: &str) -> Option<String>;
}

/// Why a transport could not open, from the HTTP answer that refused it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    /// 401: the token or ticket was refused.
    Unauthorized,
    /// 403: origin or user not allowed.
    Forbidden,
    /// 404 `unknown_session`: the session to resume is gone.
    SessionUnknown,
    /// 429 / 503: come back after this many milliseconds.
    Overloaded { retry_after_ms: Option<u64> },
    /// 413: a body over the server's limit.
    TooLarge,
    /// Network error, 5xx, disabled transport: this rung failed (or, at the ticket step, the
    /// server is unreachable).
    Network(String),
}

fn js_err(e: JsValue) -> String {
    e.as_string().or_else(|| get(&e, "message").as_string()).unwrap_or_else(|| "network error".into())
}

impl OpenFailure {
    /// A short human description.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Unauthorized => "unauthorized".into(),
            Self::Forbidden => "forbidden".into(),
            Self::SessionUnknown => "unknown session".into(),
            Self::Overloaded { .. } => "server overloaded".into(),
            Self::TooLarge => "body too large".into(),
            Self::Network(why) => why.clone(),
        }
    }
}

/// A finished HTTP exchange: what the transports read from a response.
pub(crate) struct Reply {
    pub ok: bool,
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

fn set(o: &JsValue, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(o, &JsValue::from_str(key), value);
}

/// Performs a fetch, reads the body as text and calls `done` with the reply, always from a
/// promise reaction (never synchronously). Aborting `signal` makes it finish with a failure.
pub(crate) fn fetch(
    url: &str,
    method: &str,
    header: Option<(&str, &str)>,
    body: Option<&str>,
    signal: Option<&JsValue>,
    done: Box<dyn FnOnce(Result<Reply, OpenFailure>)>,
) {
    // `RequestInit` and the headers as plain objects (what fetch accepts). A header value fetch
    // refuses rejects the fetch.
    let init: JsValue = Object::new().into();
    set(&init, "method", &method.into());
    if let Some((k, v)) = header {
        let headers: JsValue = Object::new().into();
        set(&headers, k, &v.into());
        set(&init, "headers", &headers);
    }
    if let Some(b) = body {
        set(&init, "body", &b.into());
    }
    if let Some(s) = signal {
        set(&init, "signal", s);
    }
    on_settle(&global_fetch(url, &init), Box::new(move |answer| {
        let resp: Response = match answer {
            Ok(r) => r.unchecked_into(),
            Err(e) => return done(Err(OpenFailure::Network(js_err(e)))),
        };
        let ok = get(&resp, "ok").as_bool().unwrap_or(false);
        let status = get(&resp, "status").as_f64().unwrap_or(0.0) as u16;
        let retry_after = resp.headers().get_header("retry-after");
        on_settle(&resp.text(), Box::new(move |body| {
            let body = match body {
                Ok(v) => v.as_string().unwrap_or_default(),
                // An error answer whose body cannot be read is still that error.
                Err(_) if !ok => String::new(),
                Err(e) => return done(Err(OpenFailure::Network(js_err(e)))),
            };
            done(Ok(Reply { ok, status, retry_after, body }));
        }));
    }));
}

/// Maps a non-2xx reply to an [`OpenFailure`], reading its JSON error body.
pub(crate) fn failure(reply: &Reply) -> OpenFailure {
    let retry_header = reply.retry_after.as_deref().and_then(|s| parse_dec(s.trim())).map(|secs| secs * 1000);
    let parsed = json::parse(&reply.body).unwrap_or(Json::Null);
    let code = parsed.get("error").and_then(Json::as_str).unwrap_or_default();
    let retry_body = parsed.get("retry_after_ms").and_then(Json::as_u64);
    match (reply.status, code) {
        (401, _) => OpenFailure::Unauthorized,
        (403, _) => OpenFailure::Forbidden,
        (404, "unknown_session") => OpenFailure::SessionUnknown,
        (429, _) | (503, _) => OpenFailure::Overloaded { retry_after_ms: retry_body.or(retry_header) },
        (413, _) => OpenFailure::TooLarge,
        (status, _) => OpenFailure::Network(concat(&["HTTP ", &dec(status.into()), " ", code])),
    }
}

/// Trades a bearer token for a single-use ticket. `resume` and `probe` go in the JSON body
/// (a resume token is a secret: it never appears in a URL).
pub(crate) fn ticket(
    base_url: &str,
    token: &str,
    resume: Option<&str>,
    probe: bool,
    signal: &JsValue,
    done: Box<dyn FnOnce(Result<String, OpenFailure>)>,
) {
    let auth = concat(&["Bearer ", token]);
    let url = concat(&[base_url, "/v1/ticket"]);
    let mut body = String::from("{");
    if let Some(r) = resume {
        body.push_str("\"resume\":");
        push_json_str(&mut body, r);
        if probe {
            body.push_str(",\"probe\":true");
        }
    }
    body.push('}');
    fetch(&url, "POST", Some(("authorization", &auth)), Some(&body), Some(signal), Box::new(move |reply| {
        done(reply.and_then(|reply| {
            if !reply.ok {
                return Err(failure(&reply));
            }
            let parsed = json::parse(&reply.body).ok_or_else(|| OpenFailure::Network("ticket: bad JSON".into()))?;
            parsed
                .get("ticket")
                .and_then(Json::as_str)
                .map(String::from)
                .ok_or_else(|| OpenFailure::Network("ticket: missing field".into()))
        }))
    }));
}

/// `encodeURIComponent`.
pub(crate) fn enc(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

/// The URL of a transport endpoint with its ticket (the ticket names the session to resume).
pub(crate) fn transport_url(base_url: &str, path: &str, ticket: &str) -> String {
    concat(&[base_url, path, "?v=1&ticket=", &enc(ticket)])
}

/// What the upstream needs from a `welcome`: the resume token that authenticates `POST
/// /v1/send`, and the largest body the server accepts.
pub(crate) struct WelcomeInfo {
    pub token: String,
    pub max_batch_bytes: usize,
}

/// Reads a `welcome` frame, if this is one.
pub(crate) fn welcome_info(frame: &ServerFrame) -> Option<WelcomeInfo> {
    let ServerFrame::Welcome { resume_token, limits, .. } = frame else { return None };
    // A server that does not announce its body limit accepts at least one frame's worth.
    let max_batch_bytes = [limits.max_batch_bytes, limits.max_frame_bytes, 65_536]
        .into_iter()
        .find(|n| *n >= 1)
        .unwrap_or(65_536) as usize;
    Some(WelcomeInfo { token: resume_token.clone(), max_batch_bytes })
}
