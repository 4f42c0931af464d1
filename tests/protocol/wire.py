"""A third-party rtlink client, written from docs/PROTOCOL.md only, with the standard library.

Nothing here comes from the project's own code: HTTP with `http.client`, a minimal WebSocket
client (RFC 6455: upgrade, masked client frames, fragmented messages, ping/pong, close), a
streaming `text/event-stream` parser, and HS256 JWTs. Every wait is bounded by a timeout.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import struct
import time
import urllib.parse

TIMEOUT = 10.0  # seconds: the longest any single wait in the suite may take


# ---------------------------------------------------------------- tokens (RFC 7519, HS256)

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret, claims, alg="HS256"):
    """A JWT signed with `secret` (HS256), or unsigned when `alg` is "none"."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode()
    if alg == "none":
        return f"{header}.{body}."
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


# ---------------------------------------------------------------- plain HTTP

class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<HTTP {self.status} {self.body[:300]!r}>"


def request(port, method, path, body=None, headers=None, timeout=TIMEOUT):
    """One HTTP/1.1 request on its own connection; `body` may be bytes, str or a JSON value."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- WebSocket (RFC 6455)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class UpgradeRefused(Exception):
    """The server answered the upgrade request with something other than 101."""

    def __init__(self, response):
        super().__init__(f"upgrade refused: {response!r}")
        self.response = response


class Closed(Exception):
    """The server closed the WebSocket (close frame) or the TCP connection (code None)."""

    def __init__(self, code, reason):
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


def encode_frame(opcode, payload, fin=True, mask=True):
    """One client frame; client frames are always masked (RFC 6455 5.3)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _read_http_head(sock, buf, deadline):
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed during the HTTP head: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


class WebSocket:
    """A blocking WebSocket client. `recv()` returns decoded JSON text messages."""

    def __init__(self, sock, rest):
        self.sock = sock
        self.buf = rest
        self.closed = None  # (code, reason) once a close frame arrived

    @classmethod
    def connect(cls, port, path, origin=None, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if origin:
            lines.append(f"Origin: {origin}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, headers, rest = _read_http_head(sock, b"", deadline)
        if status != 101:
            body = rest
            length = int(headers.get("content-length", "0"))
            while len(body) < length and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            sock.close()
            raise UpgradeRefused(Response(status, headers, body))
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            sock.close()
            raise AssertionError(f"bad Sec-WebSocket-Accept: {headers}")
        return cls(sock, rest)

    # -- sending

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, frame):
        """Send one rtlink frame (a dict, or already encoded text) as one text message."""
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self.sock.sendall(encode_frame(OP_TEXT, text.encode()))

    def close(self, code=1000):
        try:
            self.sock.sendall(encode_frame(OP_CLOSE, struct.pack("!H", code)))
        except OSError:
            pass
        self.sock.close()

    def drop(self):
        """Cut the TCP connection without a close frame (a lost network)."""
        self.sock.close()

    # -- receiving

    def _need(self, n, deadline):
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no WebSocket frame in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no WebSocket frame in time") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.sock.close()
                raise Closed(None, "TCP connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_frame(self, deadline):
        b0, b1 = self._need(2, deadline)
        fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._need(2, deadline))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._need(8, deadline))
        if masked:
            raise AssertionError("the server sent a masked frame (RFC 6455 5.1 forbids it)")
        return bool(fin), opcode, self._need(n, deadline)

    def recv(self, timeout=TIMEOUT):
        """The next text message as JSON. Answers WebSocket pings; raises Closed on a close."""
        if self.closed:
            raise Closed(*self.closed)
        deadline = time.monotonic() + timeout
        parts = []
        while True:
            fin, opcode, payload = self._read_frame(deadline)
            if opcode == OP_PING:
                self.sock.sendall(encode_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = (code, payload[2:].decode("utf-8", "replace"))
                try:
                    self.sock.sendall(encode_frame(OP_CLOSE, payload[:2]))
                except OSError:
                    pass
                self.sock.close()
                raise Closed(*self.closed)
            elif opcode in (OP_TEXT, OP_CONT):
                parts.append(payload)
                if fin:
                    return json.loads(b"".join(parts).decode("utf-8"))
            else:
                raise AssertionError(f"unexpected WebSocket opcode {opcode}")

    def expect_close(self, timeout=TIMEOUT):
        """Read until the server closes; returns (code, reason) and the frames before it."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                seen.append(self.recv(max(0.01, deadline - time.monotonic())))
            except Closed as closed:
                return closed.code, closed.reason, seen


# ---------------------------------------------------------------- Server-Sent Events

class EventStream:
    """A `text/event-stream` response read event by event (id, event, data), comments kept."""

    def __init__(self, conn, resp):
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self.comments = []

    @classmethod
    def open(cls, port, path, headers=None, timeout=TIMEOUT):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        return cls(conn, conn.getresponse())

    def next_event(self, timeout=TIMEOUT):
        """The next event as {"id", "event", "data"}; None when the stream ended."""
        deadline = time.monotonic() + timeout
        event = {"id": None, "event": "message", "data": []}
        have_field = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no SSE event in time")
            self.conn.sock.settimeout(remaining)
            try:
                raw = self.resp.readline()
            except socket.timeout:
                raise TimeoutError("no SSE event in time") from None
            if not raw:
                return None
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if have_field:
                    event["data"] = "\n".join(event["data"])
                    return event
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            have_field = True
            if name == "data":
                event["data"].append(value)
            elif name in ("id", "event"):
                event[name] = value

    def recv(self, timeout=TIMEOUT):
        """The next rtlink frame (the JSON in the event's data); raises Closed at stream end."""
        event = self.next_event(timeout)
        if event is None:
            raise Closed(None, "SSE stream ended")
        frame = json.loads(event["data"])
        frame["_sse_id"] = event["id"]
        return frame

    def close(self):
        self.conn.close()


# ---------------------------------------------------------------- helpers over any transport

def recv_until(transport, predicate, timeout=TIMEOUT, answer_pings=None):
    """Frames until one matches `predicate`; returns (match, frames skipped before it).

    Server `ping` frames are answered with `pong` through `answer_pings` (a callable) when given.
    """
    deadline = time.monotonic() + timeout
    skipped = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no matching frame in time; saw {skipped}")
        frame = transport.recv(remaining)
        if frame.get("t") == "ping" and answer_pings:
            answer_pings({"t": "pong"})
        if predicate(frame):
            return frame, skipped
        skipped.append(frame)


def query(**params):
    return urllib.parse.urlencode(params)
