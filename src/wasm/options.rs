//! `ClientOptions` from JS, validated into the core's [`Config`]. Bad options throw an
//! `RtlinkError` with code `invalid_options` naming the field.

use js_sys::{Array, Function};
use wasm_bindgen::{JsCast, JsValue};

use super::error::rtlink_error;
use super::get;
use super::types::transport_from_name;
use crate::core::text::concat;
use crate::core::Config;

pub(crate) struct Options {
    pub url: String,
    pub get_token: Function,
    pub config: Config,
    pub remember_transport: bool,
}

fn invalid(msg: &str) -> JsValue {
    rtlink_error("invalid_options", msg)
}


fn opt_ms(obj: &JsValue, key: &str, path: &str) -> Result<Option<u64>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(n) if (0.0..=86_400_000.0).contains(&n) => Ok(Some(n as u64)),
        _ => Err(invalid(&concat(&[path, " must be a number of milliseconds between 0 and 86400000"]))),
    }
}

pub(crate) fn parse(options: &JsValue) -> Result<Options, JsValue> {
    if !options.is_object() {
        return Err(invalid("options must be an object with `url` and `getToken`"));
    }
    let url = get(options, "url").as_string().ok_or_else(|| invalid("`url` must be a string"))?;
    let url = url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid("`url` must start with http:// or https:// (the server's base URL)"));
    }
    let get_token: Function = get(options, "getToken")
        .dyn_into()
        .map_err(|_| invalid("`getToken` must be a function returning a token or a promise of one"))?;

    let mut config = Config::default();
    let transports = get(options, "transports");
    if !transports.is_undefined() {
        let list: Array = transports.dyn_into().map_err(|_| invalid("`transports` must be an array"))?;
        let mut kinds = Vec::new();
        for name in list.iter() {
            let name = name.as_string().unwrap_or_default();
            let kind = transport_from_name(&name).ok_or_else(|| {
                invalid(&concat(&["unknown transport \"", &name, "\": use \"websocket\", \"sse\" or \"long-polling\""]))
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(invalid("`transports` must name at least one transport"));
        }
        config.transports = kinds;
    }
    let backoff = get(options, "backoff");
    if backoff.is_object() {
        if let Some(v) = opt_ms(&backoff, "baseMs", "backoff.baseMs")? {
            config.backoff.base_ms = v.max(1);
        }
        if let Some(v) = opt_ms(&backoff, "capMs", "backoff.capMs")? {
            config.backoff.cap_ms = v.max(1);
        }
        let max = get(&backoff, "maxAttempts");
        if !(max.is_undefined() || max.is_null()) {
            match max.as_f64() {
                Some(n) if n >= 1.0 && n.fract() == 0.0 && n <= 1e9 => config.backoff.max_attempts = Some(n as u32),
                _ => return Err(invalid("backoff.maxAttempts must be a positive integer or null")),
            }
        }
    }
    let heartbeat = get(options, "heartbeat");
    if heartbeat.is_object() {
        if let Some(v) = opt_ms(&heartbeat, "graceMs", "heartbeat.graceMs")? {
            config.heartbeat_grace_ms = v;
        }
    }
    if let Some(v) = opt_ms(options, "probeIntervalMs", "probeIntervalMs")? {
        // A probe opens a second connection: more often than once a second is a storm.
        config.probe_interval_ms = v.max(250);
    }
    let remember_transport = get(options, "rememberTransport").as_bool().unwrap_or(true);
    Ok(Options { url, get_token, config, remember_transport })
}

/// `RoomOptions.history`: recent messages to deliver on joining (0 when absent).
pub(crate) fn room_history(options: &JsValue) -> Result<u32, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(0);
    }
    if !options.is_object() {
        return Err(rtlink_error("invalid_argument", "room options must be an object"));
    }
    let h = get(options, "history");
    if h.is_undefined() || h.is_null() {
        return Ok(0);
    }
    match h.as_f64() {
        Some(n) if (0.0..=10_000.0).contains(&n) && n.fract() == 0.0 => Ok(n as u32),
        _ => Err(rtlink_error("invalid_argument", "history must be a whole number from 0 to 10000")),
    }
}
