//! `GET /v1/rooms/{room}/presence` and `GET /v1/rooms/{room}/history`: what a backend can read
//! about a room. Both come from the broker, so on a cluster they describe every node.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::{broker_unavailable, invalid_room, ok, Backend};
use crate::app::AppState;
use crate::http;
use crate::rooms::valid_room;

/// Messages a history call returns when it does not say.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// `400 invalid_room` unless `room` is a valid room name.
fn refuse_room(room: &str) -> Option<Response> {
    (!valid_room(room)).then(|| invalid_room("room names are 1-128 of [A-Za-z0-9_.:-]"))
}

/// Members of a room, by user, with their connections (one per tab or device).
pub async fn presence(
    _: Backend,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Response {
    if let Some(resp) = refuse_room(&room) {
        return resp;
    }
    let conns = match state.hub.broker.presence_snapshot(&room).await {
        Ok(c) => c,
        Err(e) => return broker_unavailable(&e),
    };
    let total = conns.len();
    // BTreeMap: members sorted by user id, a stable answer. The snapshot lists connections in
    // the order they last changed, so a user's name is that of their latest change, as
    // clients show it.
    let mut members: BTreeMap<String, (String, Vec<Value>)> = BTreeMap::new();
    for c in conns.iter().map(|e| &e.conn) {
        let entry = members.entry(c.user.clone()).or_default();
        entry.0.clone_from(&c.name);
        entry
            .1
            .push(json!({ "session": c.session, "meta": c.meta }));
    }
    let members: Vec<Value> = members
        .into_iter()
        .map(|(user, (name, conns))| {
            json!({ "user": user, "name": name, "connections": conns.len(), "conns": conns })
        })
        .collect();
    ok(json!({ "room": room, "connections": total, "members": members }))
}

/// Retained messages: the newest `limit` (default 100), or with `since` the first `limit`
/// after that offset; oldest first either way.
pub async fn history(
    _: Backend,
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = refuse_room(&room) {
        return resp;
    }
    let max = state.config.history_max_messages.max(1);
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_HISTORY_LIMIT.min(max),
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => return http::bad_request(&format!("`limit` must be 1-{max}")),
    };
    let since = match query.get("since").map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return http::bad_request("`since` must be an offset (a number)"),
    };
    let broker = &state.hub.broker;
    let page = match since {
        Some(since) => broker.history(&room, since, limit).await,
        None => match broker.history(&room, 0, 0).await {
            Ok(head) => {
                broker
                    .history(&room, head.head.saturating_sub(limit as u64), limit)
                    .await
            }
            Err(e) => Err(e),
        },
    };
    let page = match page {
        Ok(p) => p,
        Err(e) => return broker_unavailable(&e),
    };
    let messages: Vec<Value> = page
        .messages
        .iter()
        .map(|m| {
            json!({
                "offset": m.offset,
                "sender": m.sender,
                "name": m.name,
                "payload": m.payload,
                "stored_at_ms": m.stored_at_ms,
            })
        })
        .collect();
    ok(json!({
        "room": room,
        "epoch": &*page.epoch,
        "head": page.head,
        "complete": page.complete,
        "messages": messages,
    }))
}
