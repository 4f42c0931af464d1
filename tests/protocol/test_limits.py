"""Limits a client must respect and how they are refused (docs/PROTOCOL.md *Endpoints*
(admission), *Sessions, resume and limits*, *Server API*). Each test starts a server with the
limit set low, so the refusal is reached in a few requests."""

import json
import math
import socket
import time
import unittest

from client import (assert_error, await_frame, poll_open, ticket, ticket_response, ws_open, ws_publish,
                    ws_subscribe)
from server import API_KEY, SECRET, Redis, start_for_test, token, unique
from wire import Closed, UpgradeRefused, WebSocket, bearer, query, request


def assert_retry_after_matches(test, response, body):
    """`Retry-After` is `retry_after_ms` in whole seconds, rounded up."""
    test.assertEqual(response.headers.get("retry-after"), str(math.ceil(body["retry_after_ms"] / 1000)),
                     (response.headers, body))


class Admission(unittest.TestCase):
    def test_an_address_over_its_accept_budget_gets_429_with_a_delay_of_at_least_200_ms(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--accept-rate-per-ip", "1", "--accept-burst-per-ip", "2")
        granted = [ticket(server) for _ in range(2)]
        refused = ticket_response(server, token())
        body = assert_error(self, refused, 429, "overloaded")
        self.assertGreaterEqual(body["retry_after_ms"], 200)
        self.assertLessEqual(body["retry_after_ms"], 60_000)
        assert_retry_after_matches(self, refused, body)
        # An open with a ticket already issued is never refused for rate.
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=granted[0]))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1})
        await_frame(ws, "welcome")

    def test_too_many_connections_from_one_address_is_429_at_the_ticket_and_at_the_open(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--max-connections-per-ip", "2")
        spare = ticket(server)
        for _ in range(2):
            ws, _ = ws_open(server)
            self.addCleanup(ws.close)
        at_ticket = ticket_response(server, token())
        assert_retry_after_matches(self, at_ticket, assert_error(self, at_ticket, 429, "overloaded"))
        with self.assertRaises(UpgradeRefused) as refused:
            WebSocket.connect(server.port, "/v1/ws?" + query(ticket=spare))
        response = refused.exception.response
        assert_error(self, response, 429, "overloaded")
        self.assertIn("retry-after", response.headers)

    def counted_connection(self, server):
        """A kept-alive connection the server has served once. The connections of the start-up
        health checks may still be counted for a moment after they closed: retry until one is
        served (bounded)."""
        deadline = time.monotonic() + 10
        while True:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status_line = s.recv(1024).split(b"\r\n")[0]
            if b" 200 " in status_line:
                self.addCleanup(s.close)
                return s
            s.close()
            self.assertLess(time.monotonic(), deadline, status_line)
            time.sleep(0.05)  # waiting for the server to see earlier connections closed

    def test_over_the_tcp_cap_the_exact_documented_503_is_written(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--max-tcp-connections-per-ip", "2")
        held = [self.counted_connection(server) for _ in range(2)]
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.addCleanup(extra.close)
        answer = b""
        while True:
            chunk = extra.recv(4096)
            if not chunk:
                break
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.assertEqual(lines[0], "HTTP/1.1 503 Service Unavailable")
        self.assertIn("retry-after: 5", [line.lower() for line in lines])
        self.assertEqual(json.loads(body), {"error": "overloaded", "message": "too many connections",
                                            "retry_after_ms": 5000})

    def test_a_ticket_lives_as_long_as_announced(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--ticket-ttl", "1s")
        response = ticket_response(server, token())
        self.assertEqual(response.json()["expires_in_ms"], 1000)
        time.sleep(1.5)  # letting the ticket expire: time has to pass, there is no event to await
        opened = request(server.port, "GET", "/v1/poll?" + query(ticket=response.json()["ticket"], v=1))
        assert_error(self, opened, 401, "unauthorized")


class SessionCaps(unittest.TestCase):
    def test_sessions_from_one_address_over_the_cap_are_429_or_close_1013_after_hello(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--max-sessions-per-ip", "2")
        for _ in range(2):
            ws, _ = ws_open(server)
            self.addCleanup(ws.close)
        refused = poll_open(server)
        assert_retry_after_matches(self, refused, assert_error(self, refused, 429, "overloaded"))
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=ticket(server)))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1})
        code, _, frames = ws.expect_close()
        self.assertEqual((code, frames), (1013, []))

    def test_sessions_over_the_total_cap_are_503(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--max-sessions", "2")
        for _ in range(2):
            ws, _ = ws_open(server)
            self.addCleanup(ws.close)
        refused = poll_open(server)
        assert_retry_after_matches(self, refused, assert_error(self, refused, 503, "overloaded"))


class BrokerLoss(unittest.TestCase):
    def test_a_node_that_lost_redis_answers_tickets_503_after_about_a_second(self):
        redis = Redis()
        self.addCleanup(redis.stop)
        redis.start()
        server = start_for_test(self, "--auth-secret", SECRET, "--redis", redis.url)
        self.assertEqual(ticket_response(server, token()).status, 200)
        redis.stop()
        refused = ticket_response(server, token())
        body = assert_error(self, refused, 503, "overloaded")
        self.assertTrue(1000 <= body["retry_after_ms"] < 2000, body)  # 1 s, spread like every delay
        assert_retry_after_matches(self, refused, body)


class PublishBudgets(unittest.TestCase):
    def test_a_user_over_the_publish_byte_budget_is_nacked_rate_limited_and_nothing_is_stored(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--publish-bytes-per-sec", "1",
                                "--publish-bytes-burst", "65536")
        ws, welcome = ws_open(server)
        self.addCleanup(ws.close)
        self.assertEqual((welcome["limits"]["publish_bytes_per_sec"], welcome["limits"]["publish_bytes_burst"]),
                         (1, 65536))
        room = unique("room")
        ws_subscribe(ws, room)
        self.assertEqual(ws_publish(ws, room, "a" * 40_000, "b1")["t"], "ack")
        nack = ws_publish(ws, room, "b" * 40_000, "b2")
        self.assertEqual((nack["t"], nack["code"]), ("nack", "rate_limited"))
        self.assertEqual(nack["reason"], "publish byte budget of this user exceeded")
        self.assertEqual(ws_publish(ws, room, "c", "b3")["offset"], 2, "the refused publish took no offset")

    def test_an_api_key_over_its_publish_byte_budget_gets_the_documented_429(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--api-key", API_KEY,
                                "--api-publish-bytes-per-sec", "1")
        room = unique("room")
        batch = {"messages": [{"room": room, "payload": "x" * 60_000} for _ in range(100)]}
        first = request(server.port, "POST", "/v1/publish", body=batch, headers=bearer(API_KEY), timeout=60)
        self.assertEqual(first.status, 200, first)
        second = request(server.port, "POST", "/v1/publish", body=batch, headers=bearer(API_KEY), timeout=60)
        body = assert_error(self, second, 429, "rate_limited")
        self.assertEqual(body["message"], "publish byte budget of this API key exceeded; nothing was stored")
        self.assertGreater(body["retry_after_ms"], 0)
        assert_retry_after_matches(self, second, body)
        history = request(server.port, "GET", f"/v1/rooms/{room}/history?limit=1", headers=bearer(API_KEY))
        self.assertEqual(history.json()["head"], 100, "nothing of the refused batch was stored")


class TokenExpiry(unittest.TestCase):
    def test_a_transport_whose_token_expires_is_closed_4009(self):
        server = start_for_test(self, "--auth-secret", SECRET, "--ping-interval", "500ms", "--auth-leeway", "0s")
        ws, _ = ws_open(server, token(exp_in=2))
        self.addCleanup(ws.close)
        deadline = time.monotonic() + 10
        with self.assertRaises(Closed) as closed:
            while True:  # answering pings, so only the token can end it
                frame = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
                if frame["t"] == "ping":
                    ws.send({"t": "pong"})
        self.assertEqual(closed.exception.code, 4009)


if __name__ == "__main__":
    unittest.main()
