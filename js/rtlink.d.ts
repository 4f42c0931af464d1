/* tslint:disable */
/* eslint-disable */

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
    /** The server's base URL, e.g. "https://rt.example.com"; or several nodes of one cluster,
     *  preferred first: the client fails over to the next when one stops answering. */
    url: string | string[];
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



export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

export interface InitOutput {
    readonly memory: WebAssembly.Memory;
}

export type SyncInitInput = BufferSource | WebAssembly.Module;

/**
 * Instantiates the given `module`, which can either be bytes or
 * a precompiled `WebAssembly.Module`.
 *
 * @param {{ module: SyncInitInput }} module - Passing `SyncInitInput` directly is deprecated.
 *
 * @returns {InitOutput}
 */
export function initSync(module: { module: SyncInitInput } | SyncInitInput): InitOutput;

/**
 * If `module_or_path` is {RequestInfo} or {URL}, makes a request and
 * for everything else, calls `WebAssembly.instantiate` directly.
 *
 * @param {{ module_or_path: InitInput | Promise<InitInput> }} module_or_path - Passing `InitInput` directly is deprecated.
 *
 * @returns {Promise<InitOutput>}
 */
export default function __wbg_init (module_or_path?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>): Promise<InitOutput>;
