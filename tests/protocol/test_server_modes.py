"""What depends on server flags: a disabled transport, no API key, demo mode and drain, the rate
limit, the per-user session cap, heartbeats, the test-control exit (docs/PROTOCOL.md)."""

import base64
import json
import time
import unittest

from client import assert_error, await_frame, ticket, ticket_response, ws_open, ws_subscribe
from server import SECRET, Server, start_for_module, token, unique
from wire import Closed, WebSocket, bearer, query, recv_until, request

DRAIN_WINDOW_MS = 2000
RATE_BURST = 3
RATE_STRIKES = 3
SESSIONS_PER_USER = 2
PRESENCE_BATCH_MIN_MEMBERS = 3
MAX_ROOM_MEMBERS = 5
PING_INTERVAL_MS = 1000
HEARTBEAT_GRACE_MS = 1000


def setUpModule():
    global server
    server = start_for_module(
        "--auth-secret", SECRET,
        "--demo-auth",
        "--disable-transport", "sse",
        "--drain-window", f"{DRAIN_WINDOW_MS}ms",
        "--drain-grace", "3s",
        "--rate-per-sec", "1",
        "--rate-burst", str(RATE_BURST),
        "--rate-strikes", str(RATE_STRIKES),
        "--max-sessions-per-user", str(SESSIONS_PER_USER),
        "--ping-interval", f"{PING_INTERVAL_MS}ms",
        "--heartbeat-grace", f"{HEARTBEAT_GRACE_MS}ms",
        "--presence-batch-min-members", str(PRESENCE_BATCH_MIN_MEMBERS),
        "--presence-off", "audience:*",
        "--max-room-members", str(MAX_ROOM_MEMBERS),
    )


def own_origin():
    return f"http://127.0.0.1:{server.port}"


def jwt_claims(jwt):
    body = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


class DisabledTransport(unittest.TestCase):
    def test_a_disabled_transport_is_404_transport_disabled_before_any_other_check(self):
        response = request(server.port, "GET", "/v1/sse?" + query(ticket="whatever", v=1),
                           headers={"Origin": "https://anything.example"})
        assert_error(self, response, 404, "transport_disabled")

    def test_the_other_transports_still_open(self):
        ws, _ = ws_open(server)
        ws.close()
        self.assertEqual(request(server.port, "GET", "/v1/poll?" + query(ticket=ticket(server), v=1)).status, 200)


class WithoutApiKey(unittest.TestCase):
    def test_the_server_api_answers_401_when_no_key_is_configured(self):
        response = request(server.port, "POST", "/v1/publish", body={"room": "a", "payload": 1},
                           headers=bearer("any-key-at-all-0123456789"))
        assert_error(self, response, 401, "unauthorized")


class DemoMode(unittest.TestCase):
    def test_a_demo_token_is_issued_for_a_name_and_opens_a_session(self):
        response = request(server.port, "POST", "/v1/demo-token", body={"name": "Ana"})
        self.assertEqual(response.status, 200, response)
        demo = response.json()["token"]
        claims = jwt_claims(demo)
        self.assertEqual(claims.get("name"), "Ana")
        self.assertIn("*", claims.get("rooms"))
        self.assertAlmostEqual(claims["exp"] - time.time(), 3600, delta=120)
        ws, welcome = ws_open(server, demo)
        ws.close()
        self.assertEqual(welcome["user"]["name"], "Ana")

    def test_demo_endpoints_refuse_a_foreign_origin_403(self):
        for path, body in (("/v1/demo-token", {"name": "Ana"}), ("/v1/demo/drain", None)):
            with self.subTest(path=path):
                response = request(server.port, "POST", path, body=body, headers={"Origin": "https://evil.example"})
                assert_error(self, response, 403, "origin_not_allowed")

    def test_demo_token_accepts_the_servers_own_origin(self):
        response = request(server.port, "POST", "/v1/demo-token", body={"name": "Ana"},
                           headers={"Origin": own_origin()})
        self.assertEqual(response.status, 200, response)

    def test_drain_announces_a_window_closes_4008_then_serves_again(self):
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        self.assertEqual(request(server.port, "POST", "/v1/demo/drain").status, 202)
        announce, _ = await_frame(ws, "reconnect_after")
        self.assertEqual((announce["min_ms"], announce["max_ms"]), (0, DRAIN_WINDOW_MS))
        # Draining until this client's transport is gone (it has not answered the close yet):
        # /healthz is 503 and tickets are 503 overloaded with a delay in [1 s, drain window].
        self.assertEqual(request(server.port, "GET", "/healthz").status, 503)
        refused = ticket_response(server, token())
        body = assert_error(self, refused, 503, "overloaded")
        self.assertTrue(1000 <= body["retry_after_ms"] <= DRAIN_WINDOW_MS, body)
        self.assertEqual(refused.headers.get("retry-after"), str(-(-body["retry_after_ms"] // 1000)))
        code, _, _ = ws.expect_close()
        self.assertEqual(code, 4008)
        # Then it accepts connections again.
        deadline = time.monotonic() + 15
        while request(server.port, "GET", "/healthz").status != 200:
            self.assertLess(time.monotonic(), deadline, "the server never served again after a drain")
            time.sleep(0.1)  # polling a state the server exposes only through /healthz
        ws, _ = ws_open(server)
        ws.close()


class RateLimit(unittest.TestCase):
    def test_over_the_rate_publishes_are_nacked_then_the_connection_is_closed_4003(self):
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        room = unique("room")
        ws_subscribe(ws, room)
        for n in range(RATE_BURST + RATE_STRIKES + 5):
            ws.send({"t": "publish", "room": room, "id": f"r{n}", "payload": "x"})
        nacks = []
        try:
            while True:
                frame = ws.recv()
                if frame["t"] == "ping":
                    ws.send({"t": "pong"})
                if frame["t"] == "nack":
                    nacks.append(frame)
        except Closed as closed:
            self.assertEqual(closed.code, 4003)
        self.assertTrue(nacks, "rate_limited nacks come before the close")
        self.assertEqual({n["code"] for n in nacks}, {"rate_limited"})


class SessionCaps(unittest.TestCase):
    def test_a_user_whose_sessions_are_all_connected_gets_1013_after_hello(self):
        tok = token(sub=unique("capped"))
        held = [ws_open(server, tok)[0] for _ in range(SESSIONS_PER_USER)]
        for ws in held:
            self.addCleanup(ws.close)
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=ticket(server, tok)))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1})
        code, _, frames = ws.expect_close()
        self.assertEqual((code, frames), (1013, []))

    def test_long_polling_at_the_cap_is_429_overloaded(self):
        tok = token(sub=unique("capped"))
        held = [ws_open(server, tok)[0] for _ in range(SESSIONS_PER_USER)]
        for ws in held:
            self.addCleanup(ws.close)
        response = request(server.port, "GET", "/v1/poll?" + query(ticket=ticket(server, tok), v=1))
        assert_error(self, response, 429, "overloaded")
        self.assertIn("retry-after", response.headers)


class Rooms(unittest.TestCase):
    def members(self, room, n):
        out = []
        for _ in range(n):
            ws, welcome = ws_open(server)
            self.addCleanup(ws.close)
            ws_subscribe(ws, room)
            out.append((ws, welcome))
        return out

    def test_a_large_room_sends_presence_diffs(self):
        room = unique("room")
        (watcher, _), *_ = self.members(room, PRESENCE_BATCH_MIN_MEMBERS)
        newcomer, newcomer_welcome = ws_open(server, token(name="Newcomer"))
        self.addCleanup(newcomer.close)
        ws_subscribe(newcomer, room)

        def about_newcomer(frame):
            return frame.get("t") in ("presence_diff", "presence_join") and frame.get("room") == room and (
                frame.get("conn", {}).get("session") == newcomer_welcome["session"]
                or newcomer_welcome["session"] in [c["session"] for c in frame.get("joins", [])])

        frame, _ = recv_until(watcher, about_newcomer, answer_pings=watcher.send)
        self.assertEqual(frame["t"], "presence_diff")
        self.assertEqual(frame["leaves"], [])
        self.assertIn({"session": newcomer_welcome["session"], "user": newcomer_welcome["user"]["id"],
                       "name": "Newcomer", "meta": ""}, frame["joins"])
        newcomer.send({"t": "unsubscribe", "room": room})
        leave, _ = recv_until(watcher, lambda f: f.get("t") == "presence_diff" and f.get("leaves"),
                              answer_pings=watcher.send)
        self.assertEqual(leave["leaves"], [{"session": newcomer_welcome["session"],
                                            "user": newcomer_welcome["user"]["id"]}])

    def test_a_room_without_presence_has_an_empty_snapshot_and_refuses_presence(self):
        room = unique("audience:")
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        _, after = ws_subscribe(ws, room)
        self.assertEqual(after[-1]["conns"], [])
        ws.send({"t": "presence", "room": room, "meta": "x"})
        nack, _ = await_frame(ws, "nack", id=room)
        self.assertEqual(nack["code"], "forbidden")

    def test_a_full_room_is_nacked_overloaded(self):
        room = unique("room")
        self.members(room, MAX_ROOM_MEMBERS)
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        ws.send({"t": "subscribe", "room": room})
        nack, _ = await_frame(ws, "nack", id=room)
        self.assertEqual((nack["code"], nack["reason"]), ("overloaded", "the room is full"))


class Heartbeat(unittest.TestCase):
    def test_the_server_pings_every_ping_interval(self):
        ws, welcome = ws_open(server)
        self.addCleanup(ws.close)
        self.assertEqual(welcome["ping_interval_ms"], PING_INTERVAL_MS)
        await_frame(ws, "ping", timeout=PING_INTERVAL_MS / 1000 * 3)

    def test_a_client_that_never_answers_is_closed_4005(self):
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        deadline = (PING_INTERVAL_MS + HEARTBEAT_GRACE_MS) / 1000 * 3
        code, _, _ = ws.expect_close(timeout=deadline)
        self.assertEqual(code, 4005)

    def test_a_client_that_answers_pings_stays_open(self):
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        stay = (PING_INTERVAL_MS + HEARTBEAT_GRACE_MS) / 1000 * 2
        end = time.monotonic() + stay
        while time.monotonic() < end:
            try:
                frame = ws.recv(timeout=max(0.05, end - time.monotonic()))
            except TimeoutError:
                break
            if frame["t"] == "ping":
                ws.send({"t": "pong"})
        ws.send({"t": "ping"})
        await_frame(ws, "pong")


class TestControl(unittest.TestCase):
    def test_test_exit_ends_the_process_with_code_75(self):
        crash = Server(["--auth-secret", SECRET, "--test-control"])
        self.addCleanup(crash.stop)
        crash.start()
        crash.expect_exit = True
        try:
            request(crash.port, "POST", "/v1/test/exit", timeout=5)
        except OSError:
            pass  # the process may exit before it answers
        self.assertEqual(crash.proc.wait(timeout=10), 75)


if __name__ == "__main__":
    unittest.main()
