//! fetch helpers shared by the transports: the ticket exchange, upstream POSTs and error mapping.

use js_sys::{Promise, Reflect, JSON};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortSignal, Headers, RequestInit, Response};

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

/// Performs a fetch and waits for the response headers.
pub(crate) async fn fetch(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    signal: Option<&AbortSignal>,
) -> Result<Response, OpenFailure> {
    let init = RequestInit::new();
    init.set_method(method);
    let h = Headers::new().map_err(|e| OpenFailure::Network(js_err(e)))?;
    for (k, v) in headers {
        h.set(k, v).map_err(|e| OpenFailure::Network(js_err(e)))?;
    }
    init.set_headers(&h);
    if let Some(b) = body {
        init.set_body(&JsValue::from_str(b));
    }
    if let Some(s) = signal {
        init.set_signal(Some(s));
    }
    let window = web_sys::window().ok_or_else(|| OpenFailure::Network("no window".into()))?;
    let promise: Promise = window.fetch_with_str_and_init(url, &init);
    let resp = JsFuture::from(promise).await.map_err(|e| OpenFailure::Network(js_err(e)))?;
    resp.dyn_into::<Response>().map_err(|_| OpenFailure::Network("not a Response".into()))
}

/// Reads a response body as text.
pub(crate) async fn text(resp: &Response) -> Result<String, OpenFailure> {
    let p = resp.text().map_err(|e| OpenFailure::Network(js_err(e)))?;
    let v = JsFuture::from(p).await.map_err(|e| OpenFailure::Network(js_err(e)))?;
    Ok(v.as_string().unwrap_or_default())
}

/// Maps a non-2xx response to an [`OpenFailure`], reading the JSON error body.
pub(crate) async fn failure(resp: &Response) -> OpenFailure {
    let status = resp.status();
    let retry_header = resp
        .headers()
        .get("retry-after")
        .ok()
        .flatten()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| secs * 1000);
    let body = text(resp).await.unwrap_or_default();
    let parsed = JSON::parse(&body).unwrap_or(JsValue::NULL);
    let code = Reflect::get(&parsed, &"error".into()).ok().and_then(|v| v.as_string()).unwrap_or_default();
    let retry_body = Reflect::get(&parsed, &"retry_after_ms".into()).ok().and_then(|v| v.as_f64()).map(|f| f as u64);
    match (status, code.as_str()) {
        (401, _) => OpenFailure::Unauthorized,
        (403, _) => OpenFailure::Forbidden,
        (404, "unknown_session") => OpenFailure::SessionUnknown,
        (429, _) | (503, _) => OpenFailure::Overloaded { retry_after_ms: retry_body.or(retry_header) },
        _ => OpenFailure::Network(format!("HTTP {status} {code}")),
    }
}

/// Trades a bearer token for a single-use ticket.
pub(crate) async fn ticket(base_url: &str, token: &str, signal: &AbortSignal) -> Result<String, OpenFailure> {
    let auth = format!("Bearer {token}");
    let url = format!("{base_url}/v1/ticket");
    let resp = fetch(&url, "POST", &[("authorization", &auth)], None, Some(signal)).await?;
    if !resp.ok() {
        return Err(failure(&resp).await);
    }
    let body = text(&resp).await?;
    let parsed = JSON::parse(&body).map_err(|_| OpenFailure::Network("ticket: bad JSON".into()))?;
    Reflect::get(&parsed, &"ticket".into())
        .ok()
        .and_then(|v| v.as_string())
        .ok_or_else(|| OpenFailure::Network("ticket: missing field".into()))
}

/// `encodeURIComponent`.
pub(crate) fn enc(s: &str) -> String {
    String::from(js_sys::encode_uri_component(s))
}

/// The URL of a transport endpoint with its ticket and optional resume token.
pub(crate) fn transport_url(base_url: &str, path: &str, ticket: &str, resume: Option<&str>) -> String {
    let mut url = format!("{base_url}{path}?v=1&ticket={}", enc(ticket));
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
