"""The steps of docs/PROTOCOL.md a client takes, as small functions over `wire`.

`assert_error(...)` is the one check of the documented HTTP error shape:
`{"error": <code>, "message": "...", "retry_after_ms"?: n}`.
"""

import json
import time

from server import token
from wire import EventStream, WebSocket, bearer, query, recv_until, request

V = 1


def assert_error(test, response, status, code):
    """`response` is the documented HTTP error: this status, a JSON body with this code."""
    test.assertEqual(response.status, status, response)
    test.assertTrue(response.headers.get("content-type", "").startswith("application/json"), response.headers)
    body = response.json()
    test.assertEqual(body.get("error"), code, body)
    test.assertIsInstance(body.get("message"), str, body)
    test.assertTrue(body["message"], body)
    if "retry_after_ms" in body:
        test.assertIsInstance(body["retry_after_ms"], int, body)
    test.assertLessEqual(set(body), {"error", "message", "retry_after_ms"}, body)
    return body


def ticket_response(server, tok, body=None, headers=None):
    hdrs = {**(bearer(tok) if tok is not None else {}), **(headers or {})}
    return request(server.port, "POST", "/v1/ticket", body=body, headers=hdrs)


def ticket(server, tok=None, body=None):
    response = ticket_response(server, tok or token(), body)
    if response.status != 200:
        raise AssertionError(f"ticket refused: {response!r}")
    return response.json()["ticket"]


# ---------------------------------------------------------------- WebSocket

def ws_open(server, tok=None, resume=None, origin=None):
    """A WebSocket past `hello`; returns (ws, welcome)."""
    ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=ticket(server, tok)), origin=origin)
    hello = {"t": "hello", "v": V}
    if resume:
        hello["resume"] = resume
    ws.send(hello)
    welcome = ws.recv()
    if welcome.get("t") != "welcome":
        raise AssertionError(f"expected welcome, got {welcome}")
    return ws, welcome


def await_frame(transport, t, timeout=10.0, **fields):
    """The next frame of type `t` whose fields equal `fields`; returns (frame, skipped)."""

    def matches(frame):
        return frame.get("t") == t and all(frame.get(k) == v for k, v in fields.items())

    pong = transport.send if isinstance(transport, WebSocket) else None
    return recv_until(transport, matches, timeout=timeout, answer_pings=pong)


def await_presence_of(transport, t, room, session, timeout=10.0):
    """The next presence frame of type `t` in `room` about `session` (joins carry it in `conn`)."""

    def matches(frame):
        about = frame.get("conn", {}).get("session") if "conn" in frame else frame.get("session")
        return frame.get("t") == t and frame.get("room") == room and about == session

    pong = transport.send if isinstance(transport, WebSocket) else None
    return recv_until(transport, matches, timeout=timeout, answer_pings=pong)


def ws_subscribe(ws, room, **options):
    """Subscribe; returns (subscribed, frames after it up to and including presence_snapshot)."""
    ws.send({"t": "subscribe", "room": room, **options})
    subscribed, _ = await_frame(ws, "subscribed", room=room)
    snapshot, replayed = await_frame(ws, "presence_snapshot", room=room)
    return subscribed, replayed + [snapshot]


def ws_publish(ws, room, payload, pub_id, skipped=None):
    """Publish and return its ack or nack; frames read before it are appended to `skipped`."""
    ws.send({"t": "publish", "room": room, "id": pub_id, "payload": payload})
    answer, before = recv_until(ws, lambda f: f.get("t") in ("ack", "nack") and f.get("id") == pub_id,
                                answer_pings=ws.send)
    if skipped is not None:
        skipped.extend(before)
    return answer


# ---------------------------------------------------------------- SSE, long polling, upstream

def sse_open(server, tok=None, v=V, ticket_body=None):
    """An SSE stream and its first frame."""
    t = ticket(server, tok, ticket_body)
    stream = EventStream.open(server.port, "/v1/sse?" + query(ticket=t, v=v))
    return stream, stream.recv()


def send(server, resume_token, frames, content_type="text/plain"):
    body = json.dumps({"session": resume_token, "frames": frames})
    return request(server.port, "POST", "/v1/send", body=body, headers={"Content-Type": content_type})


def poll_open(server, tok=None, v=V):
    t = ticket(server, tok)
    return request(server.port, "GET", "/v1/poll?" + query(ticket=t, v=v))


def poll(server, resume_token, cursor, timeout=10.0):
    body = json.dumps({"session": resume_token, "cursor": cursor})
    return request(server.port, "POST", "/v1/poll", body=body, headers={"Content-Type": "text/plain"}, timeout=timeout)


def poll_until(server, resume_token, cursor, predicate, timeout=10.0):
    """Poll (acknowledging each batch) until a frame matches; returns (frame, cursor, frames seen)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        response = poll(server, resume_token, cursor)
        if response.status != 200:
            raise AssertionError(f"poll refused: {response!r}")
        batch = response.json()
        cursor = batch["cursor"]
        for frame in batch["frames"]:
            seen.append(frame)
            if predicate(frame):
                return frame, cursor, seen
    raise TimeoutError(f"no matching frame by long polling; saw {seen}")
