//! fetch helpers shared by the transports: the ticket exchange, upstream POSTs and error mapping.

use js_sys::{Promise, Reflect, JSON};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{AbortSignal, Headers, RequestInit, Response};

use crate::wasm::listener::on_settle;

use crate::core::text::{concat, dec, parse_dec};

/// Why a transport could not open, from the HTTP answer that refused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    /// 401: the token or ticket was refused.
    Unauthorized,
    /// 403: origin or user not allowed.
    Forbidden,
    /// 404 `unknown_session`: the session to resume is gone.
    SessionUnknown,
    /// 429 / 503: come back after this many milliseconds.
    Overloaded { retry_after_ms: Option<u64> },
    /// Network error, 5xx, disabled transport: this rung failed.
    Network(String),
}

fn js_err(e: JsValue) -> String {
    e.as_string()
        .or_else(|| Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()))
        .unwrap_or_else(|| "network error".into())
}

impl OpenFailure {
    /// A short human description (no `Debug` formatting: it costs kilobytes of wasm).
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Unauthorized => "unauthorized".into(),
            Self::Forbidden => "forbidden".into(),
            Self::SessionUnknown => "unknown session".into(),
            Self::Overloaded { .. } => "server overloaded".into(),
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

/// Performs a fetch, reads the body as text and calls `done` with the reply, always from a
/// promise reaction (never synchronously). Aborting `signal` makes it finish with a failure.
pub(crate) fn fetch(
    url: &str,
    method: &str,
    header: Option<(&str, &str)>,
    body: Option<&str>,
    signal: Option<&AbortSignal>,
    done: Box<dyn FnOnce(Result<Reply, OpenFailure>)>,
) {
    let init = RequestInit::new();
    init.set_method(method);
    let started = Headers::new().and_then(|h| {
        if let Some((k, v)) = header {
            h.set(k, v)?;
        }
        init.set_headers(&h);
        if let Some(b) = body {
            init.set_body(&JsValue::from_str(b));
        }
        if let Some(s) = signal {
            init.set_signal(Some(s));
        }
        let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
        Ok(window.fetch_with_str_and_init(url, &init))
    });
    let promise = started.unwrap_or_else(|e| Promise::reject(&e));
    on_settle(&promise, Box::new(move |answer| {
        let resp: Response = match answer {
            Ok(r) => r.unchecked_into(),
            Err(e) => return done(Err(OpenFailure::Network(js_err(e)))),
        };
        let (ok, status) = (resp.ok(), resp.status());
        let retry_after = resp.headers().get("retry-after").ok().flatten();
        let text = resp.text().unwrap_or_else(|e| Promise::reject(&e));
        on_settle(&text, Box::new(move |body| {
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
    let parsed = JSON::parse(&reply.body).unwrap_or(JsValue::NULL);
    let code = Reflect::get(&parsed, &"error".into()).ok().and_then(|v| v.as_string()).unwrap_or_default();
    let retry_body = Reflect::get(&parsed, &"retry_after_ms".into()).ok().and_then(|v| v.as_f64()).map(|f| f as u64);
    match (reply.status, code.as_str()) {
        (401, _) => OpenFailure::Unauthorized,
        (403, _) => OpenFailure::Forbidden,
        (404, "unknown_session") => OpenFailure::SessionUnknown,
        (429, _) | (503, _) => OpenFailure::Overloaded { retry_after_ms: retry_body.or(retry_header) },
        (status, _) => OpenFailure::Network(concat(&["HTTP ", &dec(status.into()), " ", &code])),
    }
}

/// Trades a bearer token for a single-use ticket.
pub(crate) fn ticket(
    base_url: &str,
    token: &str,
    signal: &AbortSignal,
    done: Box<dyn FnOnce(Result<String, OpenFailure>)>,
) {
    let auth = concat(&["Bearer ", token]);
    let url = concat(&[base_url, "/v1/ticket"]);
    fetch(&url, "POST", Some(("authorization", &auth)), None, Some(signal), Box::new(move |reply| {
        done(reply.and_then(|reply| {
            if !reply.ok {
                return Err(failure(&reply));
            }
            let parsed = JSON::parse(&reply.body).map_err(|_| OpenFailure::Network("ticket: bad JSON".into()))?;
            Reflect::get(&parsed, &"ticket".into())
                .ok()
                .and_then(|v| v.as_string())
                .ok_or_else(|| OpenFailure::Network("ticket: missing field".into()))
        }))
    }));
}

/// `encodeURIComponent`.
pub(crate) fn enc(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

/// The URL of a transport endpoint with its ticket and optional resume token.
pub(crate) fn transport_url(base_url: &str, path: &str, ticket: &str, resume: Option<&str>) -> String {
    let mut url = concat(&[base_url, path, "?v=1&ticket=", &enc(ticket)]);
    if let Some(r) = resume {
        url.push_str("&resume=");
        url.push_str(&enc(r));
    }
    url
}

/// Reads `resume_token` from a `welcome` frame, if this is one.
pub(crate) fn welcome_token(frame: &JsValue) -> Option<String> {
    let t = Reflect::get(frame, &"t".into()).ok()?.as_string()?;
    if t != "welcome" {
        return None;
    }
    Reflect::get(frame, &"resume_token".into()).ok()?.as_string()
}
