"""Two nodes sharing a real redis-server (docs/PROTOCOL.md *Several nodes (Redis)*): no sticky
sessions, tickets and offsets shared, upstream POSTs and polls forwarded, the server API covering
every node."""

import time
import unittest

from client import (assert_error, await_frame, await_presence_of, poll, poll_open, poll_until, send,
                    ticket, ws_open, ws_publish, ws_subscribe)
from server import API_KEY, SECRET, Redis, start_for_module, token, unique
from wire import UpgradeRefused, WebSocket, bearer, query, request


def setUpModule():
    global node_a, node_b
    redis = Redis()
    unittest.addModuleCleanup(redis.stop)
    redis.start()
    flags = ["--auth-secret", SECRET, "--api-key", API_KEY, "--redis", redis.url,
             "--redis-key-prefix", unique("conformance")]
    node_a = start_for_module(*flags)
    node_b = start_for_module(*flags)


def open_with(server, t):
    ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t))
    ws.send({"t": "hello", "v": 1})
    return ws


class SharedState(unittest.TestCase):
    def test_a_ticket_from_one_node_opens_on_the_other_once(self):
        t = ticket(node_a)
        ws = open_with(node_b, t)
        self.addCleanup(ws.close)
        self.assertEqual(ws.recv()["t"], "welcome")
        with self.assertRaises(UpgradeRefused) as refused:
            WebSocket.connect(node_a.port, "/v1/ws?" + query(ticket=t))
        assert_error(self, refused.exception.response, 401, "unauthorized")

    def test_the_resume_token_names_its_node(self):
        ws, welcome = ws_open(node_a)
        self.addCleanup(ws.close)
        node, _, secret = welcome["resume_token"].partition(".")
        self.assertTrue(node and secret, welcome["resume_token"])

    def test_offsets_are_global_and_messages_cross_nodes(self):
        room = unique("room")
        on_a, _ = ws_open(node_a)
        on_b, _ = ws_open(node_b)
        for ws in (on_a, on_b):
            self.addCleanup(ws.close)
        ws_subscribe(on_a, room)
        ws_subscribe(on_b, room)
        self.assertEqual(ws_publish(on_a, room, "from a", "x1")["offset"], 1)
        seen_by_b = []
        self.assertEqual(ws_publish(on_b, room, "from b", "x2", skipped=seen_by_b)["offset"], 2)
        got = [f for f in seen_by_b if f["t"] == "message"]
        while len(got) < 2:
            got.append(await_frame(on_b, "message", room=room)[0])
        self.assertEqual([(m["offset"], m["payload"]) for m in got], [(1, "from a"), (2, "from b")])

    def test_a_resume_with_since_on_the_other_node_replays_from_redis(self):
        room = unique("room")
        on_a, _ = ws_open(node_a)
        self.addCleanup(on_a.close)
        subscribed, _ = ws_subscribe(on_a, room)
        for n in (1, 2, 3):
            ws_publish(on_a, room, f"m{n}", f"r{n}")
        on_b, _ = ws_open(node_b)
        self.addCleanup(on_b.close)
        on_b.send({"t": "subscribe", "room": room, "since": 1, "epoch": subscribed["epoch"]})
        answer, _ = await_frame(on_b, "subscribed", room=room)
        self.assertEqual((answer["recovered"], answer["head"]), (True, 3))
        replay = [await_frame(on_b, "message", room=room)[0]["offset"] for _ in range(2)]
        self.assertEqual(replay, [2, 3])


class Forwarding(unittest.TestCase):
    def test_polls_and_sends_to_the_other_node_are_forwarded(self):
        opened = poll_open(node_a).json()
        resume, cursor = opened["frames"][0]["resume_token"], opened["cursor"]
        room = unique("room")
        self.assertEqual(send(node_b, resume, [{"t": "subscribe", "room": room}]).status, 204)
        subscribed, _, _ = poll_until(node_b, resume, cursor, lambda f: f["t"] == "subscribed")
        self.assertEqual(subscribed["room"], room)

    def test_an_open_with_another_nodes_resume_token_gets_a_new_session_and_supersedes_the_old(self):
        tok = token()
        on_a, welcome = ws_open(node_a, tok)
        self.addCleanup(on_a.close)
        on_b, again = ws_open(node_b, tok, resume=welcome["resume_token"])
        self.addCleanup(on_b.close)
        self.assertIs(again["resumed"], False)
        self.assertEqual(on_a.expect_close()[0], 4006)

    def test_a_probe_of_another_nodes_session_is_closed_4007(self):
        tok = token()
        on_a, welcome = ws_open(node_a, tok)
        self.addCleanup(on_a.close)
        probe = ticket(node_b, tok, body={"resume": welcome["resume_token"], "probe": True})
        ws = WebSocket.connect(node_b.port, "/v1/ws?" + query(ticket=probe))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1, "resume": welcome["resume_token"]})
        self.assertEqual(ws.expect_close()[0], 4007)
        on_a.send({"t": "ping"})
        await_frame(on_a, "pong")


class ServerApiOnEveryNode(unittest.TestCase):
    def test_presence_and_disconnect_through_one_node_cover_the_other(self):
        sub = unique("ana")
        room = unique("room")
        on_a, welcome = ws_open(node_a, token(sub=sub))
        self.addCleanup(on_a.close)
        ws_subscribe(on_a, room)
        watcher, _ = ws_open(node_b)
        self.addCleanup(watcher.close)
        ws_subscribe(watcher, room)
        # Presence is shared through Redis: wait (bounded) until node B's API lists ana.
        deadline = time.monotonic() + 5
        while True:
            presence = request(node_b.port, "GET", f"/v1/rooms/{room}/presence", headers=bearer(API_KEY)).json()
            if sub in [m["user"] for m in presence["members"]]:
                break
            self.assertLess(time.monotonic(), deadline, presence)
            time.sleep(0.05)  # polling state the API exposes; there is no frame to await

        response = request(node_b.port, "DELETE", f"/v1/users/{sub}/sessions", headers=bearer(API_KEY))
        self.assertEqual(response.json(), {"user": sub, "closed": 1})
        self.assertEqual(on_a.expect_close()[0], 4013)
        await_presence_of(watcher, "presence_leave", room, welcome["session"])

    def test_a_publish_through_one_node_reaches_subscribers_of_the_other(self):
        room = unique("room")
        on_a, _ = ws_open(node_a)
        self.addCleanup(on_a.close)
        ws_subscribe(on_a, room)
        response = request(node_b.port, "POST", "/v1/publish", body={"room": room, "payload": [1, 2]},
                           headers=bearer(API_KEY))
        self.assertEqual(response.json(), {"room": room, "offset": 1, "duplicate": False})
        message, _ = await_frame(on_a, "message", room=room)
        self.assertEqual(message["payload"], "[1,2]")


if __name__ == "__main__":
    unittest.main()
