//! The HTTP side: checks before the upgrade, the `101` answer, and handing the upgraded
//! connection to its task.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, request::Parts, HeaderMap, Method, StatusCode, Version};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use ws::tungstenite::handshake::derive_accept_key;

use super::{connection, open, Open};
use crate::app::AppState;
use crate::config::TransportKind;
use crate::http::{self, precheck, Admission};
use crate::listener::TcpSlot;
use crate::ws_wire::DirectSocket;

pub async fn handler(State(state): State<AppState>, req: Request) -> Response {
    let ip = http::client_ip(&state, &req);
    let (mut parts, _body) = req.into_parts();
    let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let prechecked = match precheck(&state, TransportKind::WebSocket, &parts.headers, ip) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let upgrade = accept_key(&parts).and_then(|key| {
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
        Some((key, on_upgrade))
    });
    let Some((accept, on_upgrade)) = upgrade else {
        return http::bad_request("expected a WebSocket upgrade");
    };
    // Last: a request refused above leaves its ticket usable.
    let admission = match prechecked
        .redeem(&state, query.get("ticket").map(String::as_str))
        .await
    {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let tcp_slot = parts.extensions.get::<TcpSlot>().cloned();
    let direct = parts.extensions.get::<DirectSocket>().cloned();
    // Everything until the session is attached runs in a boxed future freed before the
    // connection idles: see `connection`.
    let setup = Box::pin(upgraded(on_upgrade, tcp_slot, direct, state, admission, ip));
    tokio::spawn(connection(setup));
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

/// Waits for hyper to hand over the upgraded connection, then reads its `hello` and opens its
/// session; None if it went away or was refused.
async fn upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    tcp_slot: Option<TcpSlot>,
    direct: Option<DirectSocket>,
    state: AppState,
    admission: Admission,
    ip: Option<IpAddr>,
) -> Option<Open<TokioIo<hyper::upgrade::Upgraded>>> {
    let upgraded = on_upgrade.await.ok()?;
    // Hyper let go of the connection; it stays counted under the TCP caps (the slot is held
    // until the connection ends).
    open(
        TokioIo::new(upgraded),
        tcp_slot,
        direct,
        state,
        admission,
        ip,
    )
    .await
}

/// `Sec-WebSocket-Accept` for an HTTP/1.1 WebSocket upgrade request (RFC 6455 §4.2.1), or None
/// if it is not one.
fn accept_key(parts: &Parts) -> Option<String> {
    let h = &parts.headers;
    let upgrade = parts.version <= Version::HTTP_11
        && parts.method == Method::GET
        && header_has_token(h, header::CONNECTION, "upgrade")
        && header_is(h, header::UPGRADE, "websocket")
        && header_is(h, header::SEC_WEBSOCKET_VERSION, "13");
    let key = h.get(header::SEC_WEBSOCKET_KEY).filter(|_| upgrade)?;
    Some(derive_accept_key(key.as_bytes()))
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}
