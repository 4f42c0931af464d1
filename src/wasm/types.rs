//! Core values as the JS objects the public API promises, and the hand-written TypeScript that
//! describes them precisely (wasm-bindgen cannot express the event maps and overloads).

use js_sys::{Array, JSON};
use wasm_bindgen::prelude::*;

use super::{new_object, set, set_num, set_str};
use crate::core::text::{concat, dec};
use crate::core::{CloseReason, Member, State, TransportKind, TypingUser};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Any JSON value: what payloads and presence metadata may be. */
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** A transport on the ladder, best first. */
export type TransportName = "websocket" | "sse" | "long-polling";

export type ConnectionStateName = "idle" | "connecting" | "open" | "backing-off" | "offline" | "closed";

/** What a connection badge shows. */
export interface ConnectionState {
  state: ConnectionStateName;
  /** The transport in use or being tried; null when none. */
  transport: TransportName | null;
  /** Attempt number since the last stable connection (0 when not connecting). */
  attempt: number;
  /** While backing off: milliseconds until the next attempt, else null. */
  retryInMs: number | null;
  /** Why the client closed, when state is "closed". */
  reason: string | null;
}

export interface BackoffOptions {
  /** Envelope of the first retry in ms (default 500); doubles per failure. */
  baseMs?: number;
  /** Largest envelope in ms (default 30000). */
  capMs?: number;
  /** Give up after this many consecutive failures (default: never). */
  maxAttempts?: number | null;
}

export interface HeartbeatOptions {
  /** Silence tolerated beyond the server's ping interval, in ms (default 10000). */
  graceMs?: number;
}

export interface ClientOptions {
  /** The server's base URL, e.g. "https://rt.example.com". */
  url: string;
  /** Returns a fresh bearer token (a JWT from your backend). Called before every attempt. */
  getToken: () => string | Promise<string>;
  /** Allowed transports, best first (default all three). */
  transports?: TransportName[];
  backoff?: BackoffOptions;
  heartbeat?: HeartbeatOptions;
  /** Start from the last transport that worked in this tab (sessionStorage; default true). */
  rememberTransport?: boolean;
  /** While on a fallback transport, try the next better one about this often, in ms (default 60000). */
  probeIntervalMs?: number;
}

export type RtlinkErrorCode =
  | "invalid_options" | "invalid_argument" | "queue_full" | "not_subscribed" | "too_large" | "closed"
  | "timeout" | "expired" | "forbidden" | "invalid_room" | "rate_limited" | "too_many_rooms"
  | "unauthorized" | "unsupported_version" | "disconnected" | "token_failed" | "gave_up" | "internal" | "unknown";

/** The error every rtlink call throws or rejects with. */
export class RtlinkError extends Error {
  readonly name: "RtlinkError";
  readonly code: RtlinkErrorCode;
}

/** A room message, delivered once and in offset order. */
export interface Message {
  room: string;
  offset: number;
  /** The sender's user id. */
  sender: string;
  /** The sender's display name, if the server knows it. */
  name: string | null;
  payload: Json;
}

/** A user present in a room, over all their connections (tabs, devices). */
export interface PresenceMember {
  user: string;
  name: string;
  /** What the user last set with `presence.set()`, null if nothing. */
  meta: Json;
  connections: number;
}

export interface TypingUser {
  user: string;
  name: string;
}

export interface PublishResult {
  offset: number;
}

export interface ClientEventMap {
  state: ConnectionState;
  /** The client stopped for good (not after `close()`). `code` says why: "unauthorized" (a fresh
   * token was refused too), "forbidden", "unsupported_version", "disconnected" (the app's backend
   * ended the user's sessions: logout, ban), "token_failed" (getToken failed for good), "gave_up"
   * (backoff.maxAttempts reached) or "closed" (the server ended the session). */
  error: RtlinkError;
  /** The transport that last worked changed. */
  transport: TransportName;
}

export interface RoomEventMap {
  message: Message;
  /** The server confirmed the subscription (once). */
  subscribed: { room: string };
  /** Messages were lost beyond the server's history: reload the room from your source of truth. */
  resync: { room: string };
  /** The server refused the subscription (e.g. forbidden); the room is dropped. */
  error: RtlinkError;
}

export type Unsubscribe = () => void;

export interface RoomOptions {
  /** On joining, first deliver up to this many of the room's most recent messages (default 0: only
   * what is published from now on). Reconnects resume from the last message either way. */
  history?: number;
}

export class RealtimeClient {
  /** Throws RtlinkError("invalid_options") for bad options. */
  constructor(options: ClientOptions);
  on<K extends keyof ClientEventMap>(event: K, listener: (value: ClientEventMap[K]) => void): Unsubscribe;
  /** Starts connecting (no-op unless idle). A connected client stays alive until `close()` or a
   * terminal error, even if the app keeps no reference to it. */
  connect(): void;
  /** Ends the session: pending publishes reject with code "closed"; timers and listeners are removed. */
  close(): void;
  /** The room handle (subscribes on first use). Throws RtlinkError("invalid_room"). */
  room(name: string, options?: RoomOptions): Room;
  readonly state: ConnectionState;
  free(): void;
}

export class Room {
  readonly name: string;
  on<K extends keyof RoomEventMap>(event: K, listener: (value: RoomEventMap[K]) => void): Unsubscribe;
  /** Resolves when the server stored the message; rejects with RtlinkError. */
  publish(payload: Json): Promise<PublishResult>;
  /** Unsubscribes and leaves the room's presence. */
  leave(): void;
  readonly presence: Presence;
  readonly typing: Typing;
  free(): void;
}

export class Presence {
  /** Sets this connection's metadata; kept and re-announced across reconnects. */
  set(meta: Json): void;
  list(): PresenceMember[];
  on(event: "change", listener: (members: PresenceMember[]) => void): Unsubscribe;
  free(): void;
}

export class Typing {
  /** Call on every keystroke: "typing" goes out at most every 3 s, "stopped" after 5 s idle. */
  keystroke(): void;
  stop(): void;
  list(): TypingUser[];
  on(event: "change", listener: (users: TypingUser[]) => void): Unsubscribe;
  free(): void;
}

/** Live DOM listeners and owned callbacks of every client (for leak checks). */
export function liveListeners(): number;
"#;

/// `{ [key]: value }` for one string field.
pub(crate) fn obj_str(key: &str, value: &str) -> JsValue {
    let o = new_object();
    set_str(&o, key, value);
    o
}

pub(crate) fn transport_name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::WebSocket => "websocket",
        TransportKind::Sse => "sse",
        TransportKind::LongPoll => "long-polling",
    }
}

pub(crate) fn transport_from_name(name: &str) -> Option<TransportKind> {
    match name {
        "websocket" => Some(TransportKind::WebSocket),
        "sse" => Some(TransportKind::Sse),
        "long-polling" => Some(TransportKind::LongPoll),
        _ => None,
    }
}

/// Opaque JSON text as a JS value; text that is not JSON (another publisher) stays a string.
pub(crate) fn json_value(text: &str) -> JsValue {
    if text.is_empty() {
        return JsValue::NULL;
    }
    JSON::parse(text).unwrap_or_else(|_| JsValue::from_str(text))
}

pub(crate) fn close_reason(reason: &CloseReason) -> String {
    match reason {
        CloseReason::ClientClosed => "client closed".into(),
        CloseReason::Server { code, reason } => {
            concat(&["server closed (", &dec(code.0.into()), " ", code.name(), "): ", reason])
        }
        CloseReason::Unauthorized => "unauthorized: the server refused a fresh token".into(),
        CloseReason::Forbidden => "forbidden: this origin or user is not allowed".into(),
        CloseReason::TokenFailed => "getToken failed".into(),
        CloseReason::GaveUp { attempts } => concat(&["gave up after ", &dec((*attempts).into()), " attempts"]),
    }
}

pub(crate) fn state(
    state: &State,
    transport: Option<TransportKind>,
    attempt: u32,
    retry_in_ms: Option<u64>,
) -> JsValue {
    let (name, reason) = match state {
        State::Idle => ("idle", None),
        State::Connecting { .. } => ("connecting", None),
        State::Open { .. } => ("open", None),
        State::BackingOff { .. } => ("backing-off", None),
        State::Offline => ("offline", None),
        State::Closed { reason } => ("closed", Some(close_reason(reason))),
    };
    let o = obj_str("state", name);
    match transport {
        Some(t) => set_str(&o, "transport", transport_name(t)),
        None => set(&o, "transport", &JsValue::NULL),
    }
    set_num(&o, "attempt", attempt.into());
    match retry_in_ms {
        Some(ms) => set_num(&o, "retryInMs", ms as f64),
        None => set(&o, "retryInMs", &JsValue::NULL),
    }
    match reason {
        Some(r) => set_str(&o, "reason", &r),
        None => set(&o, "reason", &JsValue::NULL),
    }
    o
}

pub(crate) fn message(room: &str, offset: u64, sender: &str, name: Option<&str>, payload: &str) -> JsValue {
    let o = obj_str("room", room);
    set_num(&o, "offset", offset as f64);
    set_str(&o, "sender", sender);
    match name {
        Some(n) => set_str(&o, "name", n),
        None => set(&o, "name", &JsValue::NULL),
    }
    set(&o, "payload", &json_value(payload));
    o
}

pub(crate) fn members(members: &[Member]) -> JsValue {
    members
        .iter()
        .map(|m| {
            let o = obj_str("user", &m.user);
            set_str(&o, "name", &m.name);
            set(&o, "meta", &json_value(&m.meta));
            set_num(&o, "connections", m.connections.into());
            o
        })
        .collect::<Array>()
        .into()
}

pub(crate) fn typing_users(users: &[TypingUser]) -> JsValue {
    users
        .iter()
        .map(|u| {
            let o = obj_str("user", &u.user);
            set_str(&o, "name", &u.name);
            o
        })
        .collect::<Array>()
        .into()
}
