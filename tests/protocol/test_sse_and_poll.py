"""Server-Sent Events and long polling, with `POST /v1/send` upstream (docs/PROTOCOL.md
*Endpoints*, *Transports*, *Switching transport*)."""

import json
import queue
import threading
import time
import unittest

from client import (assert_error, await_frame, poll, poll_open, poll_until, send, sse_open, ticket,
                    ws_open, ws_publish, ws_subscribe)
from server import API_KEY, SECRET, start_for_module, start_for_test, token, unique
from wire import EventStream, WebSocket, bearer, query, request

POLL_HOLD_S = 2
SSE_KEEPALIVE_MS = 300


def setUpModule():
    global server
    server = start_for_module("--auth-secret", SECRET, "--poll-hold", f"{POLL_HOLD_S}s",
                              "--sse-keepalive", f"{SSE_KEEPALIVE_MS}ms")


class ServerSentEvents(unittest.TestCase):
    def test_the_stream_is_an_event_stream_whose_first_event_is_welcome(self):
        stream, first = sse_open(server, token(sub="sse-ana", name="Ana"))
        self.addCleanup(stream.close)
        self.assertEqual(stream.status, 200)
        self.assertTrue(stream.headers["content-type"].startswith("text/event-stream"), stream.headers)
        self.assertEqual(first["t"], "welcome")
        self.assertEqual(first["user"], {"id": "sse-ana", "name": "Ana"})
        self.assertIs(first["resumed"], False)
        self.assertEqual(first["_sse_id"], "1", "every event has id: <seq>, the welcome of a new session 1")

    def test_keep_alive_comments_flow_while_idle(self):
        stream, _ = sse_open(server)
        self.addCleanup(stream.close)
        deadline = time.monotonic() + SSE_KEEPALIVE_MS / 1000 * 10
        while "ka" not in stream.comments:
            self.assertLess(time.monotonic(), deadline, "no `: ka` comment")
            try:
                stream.next_event(timeout=SSE_KEEPALIVE_MS / 1000 * 2)
            except TimeoutError:
                pass

    def test_a_missing_v_counts_as_version_1(self):
        t = ticket(server)
        stream = EventStream.open(server.port, "/v1/sse?" + query(ticket=t))
        self.addCleanup(stream.close)
        self.assertEqual(stream.recv()["t"], "welcome")

    def test_a_hello_sent_upstream_is_closed_4012(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        self.assertEqual(send(server, welcome["resume_token"], [{"t": "hello", "v": 1}]).status, 204)
        closed, _ = await_frame(stream, "close")
        self.assertEqual(closed["code"], 4012)

    def test_event_ids_count_the_sessions_frames(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        room = unique("room")
        self.assertEqual(send(server, welcome["resume_token"], [{"t": "subscribe", "room": room}]).status, 204)
        subscribed, _ = await_frame(stream, "subscribed", room=room)
        self.assertGreater(int(subscribed["_sse_id"]), int(welcome["_sse_id"]))

    def test_upstream_frames_go_by_post_and_answers_come_on_the_stream(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        room = unique("room")
        frames = [
            {"t": "subscribe", "room": room},
            {"t": "publish", "room": room, "id": "s1", "payload": "hello"},
        ]
        response = send(server, welcome["resume_token"], frames)
        self.assertEqual(response.status, 204, response)
        await_frame(stream, "subscribed", room=room)
        ack, _ = await_frame(stream, "ack", id="s1")
        self.assertEqual((ack["room"], ack["offset"]), (room, 1))
        message, _ = await_frame(stream, "message", room=room)
        self.assertEqual((message["offset"], message["payload"]), (1, "hello"))

    def test_another_version_gets_a_stream_holding_only_close_4002(self):
        stream, first = sse_open(server, v=2)
        self.addCleanup(stream.close)
        self.assertEqual(stream.status, 200)
        self.assertEqual((first["t"], first["code"]), ("close", 4002))
        self.assertIsNone(stream.next_event(timeout=5), "nothing follows the close")

    def test_a_client_close_frame_ends_the_stream(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        send(server, welcome["resume_token"], [{"t": "close", "code": 1000, "reason": "bye"}])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            event = stream.next_event(timeout=5)
            if event is None:
                return
        self.fail("the stream did not end after a client close")

    def test_a_ticket_with_resume_continues_the_session(self):
        tok = token()
        stream, welcome = sse_open(server, tok)
        stream.close()
        again_stream, again = sse_open(server, tok, ticket_body={"resume": welcome["resume_token"]})
        self.addCleanup(again_stream.close)
        self.assertEqual((again["t"], again["resumed"], again["session"]), ("welcome", True, welcome["session"]))


class Upstream(unittest.TestCase):
    def test_send_to_an_unknown_session_is_404_unknown_session(self):
        assert_error(self, send(server, "no-such-session", [{"t": "ping"}]), 404, "unknown_session")

    def test_a_send_body_that_does_not_parse_is_400_bad_request(self):
        response = request(server.port, "POST", "/v1/send", body="{nope", headers={"Content-Type": "text/plain"})
        assert_error(self, response, 400, "bad_request")

    def test_a_send_body_over_max_batch_bytes_is_413_too_large(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        limit = welcome["limits"]["max_batch_bytes"]
        frames = [{"t": "ping"}] * (limit // len('{"t":"ping"},') + 10)
        assert_error(self, send(server, welcome["resume_token"], frames), 413, "too_large")

    def test_a_frame_over_max_frame_bytes_in_a_send_is_413_too_large(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        room = unique("room")
        send(server, welcome["resume_token"], [{"t": "subscribe", "room": room}])
        big = {"t": "publish", "room": room, "id": "big", "payload": "x" * welcome["limits"]["max_frame_bytes"]}
        assert_error(self, send(server, welcome["resume_token"], [big]), 413, "too_large")

    def test_send_accepts_application_json_too(self):
        stream, welcome = sse_open(server)
        self.addCleanup(stream.close)
        response = send(server, welcome["resume_token"], [{"t": "ping"}], content_type="application/json")
        self.assertEqual(response.status, 204, response)
        await_frame(stream, "pong")


class LongPolling(unittest.TestCase):
    def open(self, tok=None):
        response = poll_open(server, tok)
        self.assertEqual(response.status, 200, response)
        self.assertTrue(response.headers["content-type"].startswith("application/json"), response.headers)
        return response.json()

    def test_the_open_answers_a_batch_starting_with_welcome(self):
        batch = self.open(token(sub="poll-ana"))
        self.assertIsInstance(batch["cursor"], int)
        self.assertEqual(batch["frames"][0]["t"], "welcome")
        self.assertEqual(batch["frames"][0]["user"]["id"], "poll-ana")
        self.assertEqual(batch["cursor"], len(batch["frames"]), "a new session's frames count from 1")

    def test_a_poll_returns_frames_after_the_cursor(self):
        batch = self.open()
        resume, cursor = batch["frames"][0]["resume_token"], batch["cursor"]
        room = unique("room")
        self.assertEqual(send(server, resume, [{"t": "subscribe", "room": room}]).status, 204)
        subscribed, new_cursor, _ = poll_until(server, resume, cursor, lambda f: f["t"] == "subscribed")
        self.assertEqual(subscribed["room"], room)
        self.assertGreater(new_cursor, cursor)

    def test_an_old_cursor_gets_the_same_frames_again(self):
        batch = self.open()
        resume, cursor = batch["frames"][0]["resume_token"], batch["cursor"]
        room = unique("room")
        send(server, resume, [{"t": "subscribe", "room": room}])
        first = poll(server, resume, cursor).json()
        self.assertTrue(first["frames"], first)
        # The answer was "lost": the client polls again with the cursor it had.
        again = poll(server, resume, cursor).json()
        self.assertEqual(again["frames"][:len(first["frames"])], first["frames"])
        # Acknowledged frames are not sent again (the pong answers the poll at once).
        send(server, resume, [{"t": "ping"}])
        after = poll(server, resume, again["cursor"]).json()
        self.assertFalse([f for f in after["frames"] if f in first["frames"]], after)

    def test_an_idle_poll_is_held_then_answered_empty_with_the_same_cursor(self):
        batch = self.open()
        resume, cursor = batch["frames"][0]["resume_token"], batch["cursor"]
        started = time.monotonic()
        answer = poll(server, resume, cursor, timeout=POLL_HOLD_S + 8)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.json(), {"cursor": cursor, "frames": []})
        self.assertGreaterEqual(time.monotonic() - started, POLL_HOLD_S * 0.5)

    def test_a_newer_poll_answers_the_held_one_with_an_empty_batch(self):
        batch = self.open()
        resume, cursor = batch["frames"][0]["resume_token"], batch["cursor"]
        done = queue.Queue()

        def held_poll(name):
            done.put((name, poll(server, resume, cursor, timeout=POLL_HOLD_S + 8)))

        for name in ("a", "b"):
            threading.Thread(target=held_poll, args=(name,), daemon=True).start()
        # Whichever reached the server first is answered at once, empty, by the other one ...
        first_name, first = done.get(timeout=POLL_HOLD_S + 8)
        self.assertEqual(first.status, 200, first)
        self.assertEqual(first.json()["frames"], [])
        # ... which is still held: the next frame for the session goes to it.
        send(server, resume, [{"t": "ping"}])
        second_name, second = done.get(timeout=POLL_HOLD_S + 8)
        self.assertNotEqual(first_name, second_name)
        self.assertIn("pong", [f["t"] for f in second.json()["frames"]])

    def test_another_version_gets_a_batch_holding_only_close_4002(self):
        response = poll_open(server, v=2)
        self.assertEqual(response.status, 200, response)
        frames = response.json()["frames"]
        self.assertEqual([(f["t"], f["code"]) for f in frames], [("close", 4002)])

    def test_polling_an_unknown_session_is_404_unknown_session(self):
        assert_error(self, poll(server, "no-such-session", 0), 404, "unknown_session")

    def test_a_poll_body_over_4_kib_is_400_bad_request(self):
        body = json.dumps({"session": "x" * 5000, "cursor": 0})
        response = request(server.port, "POST", "/v1/poll", body=body, headers={"Content-Type": "text/plain"})
        assert_error(self, response, 400, "bad_request")

    def test_a_poll_body_that_does_not_parse_is_400_bad_request(self):
        response = request(server.port, "POST", "/v1/poll", body='{"cursor": 1}', headers={"Content-Type": "text/plain"})
        assert_error(self, response, 400, "bad_request")

    def test_messages_reach_a_long_polling_subscriber_in_offset_order(self):
        batch = self.open()
        resume, cursor = batch["frames"][0]["resume_token"], batch["cursor"]
        room = unique("room")
        send(server, resume, [{"t": "subscribe", "room": room}])
        _, cursor, _ = poll_until(server, resume, cursor, lambda f: f["t"] == "presence_snapshot")
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        ws_subscribe(ws, room)
        for n in (1, 2, 3):
            ws_publish(ws, room, f"m{n}", f"lp{n}")
        offsets = []
        while len(offsets) < 3:
            answer = poll(server, resume, cursor).json()
            cursor = answer["cursor"]
            offsets += [f["offset"] for f in answer["frames"] if f["t"] == "message"]
        self.assertEqual(offsets, [1, 2, 3])


class InBandCloses(unittest.TestCase):
    """Closes SSE and long-polling clients read as frames, not as statuses."""

    def test_a_drain_reaches_sse_and_long_polling_as_reconnect_after_then_close_4008(self):
        drained = start_for_test(self, "--auth-secret", SECRET, "--demo-auth", "--drain-window", "2s")
        stream, _ = sse_open(drained)
        self.addCleanup(stream.close)
        opened = poll_open(drained).json()
        resume, cursor = opened["frames"][0]["resume_token"], opened["cursor"]
        self.assertEqual(request(drained.port, "POST", "/v1/demo/drain").status, 202)
        announce, _ = await_frame(stream, "reconnect_after")
        self.assertEqual((announce["min_ms"], announce["max_ms"]), (0, 2000))
        self.assertEqual(await_frame(stream, "close")[0]["code"], 4008)
        _, _, seen = poll_until(drained, resume, cursor, lambda f: f["t"] == "close")
        self.assertEqual([(f["t"], f.get("code")) for f in seen if f["t"] != "ping"],
                         [("reconnect_after", None), ("close", 4008)])

    def test_a_long_poll_session_whose_buffer_overflows_is_closed_4004(self):
        small = start_for_test(self, "--auth-secret", SECRET, "--api-key", API_KEY, "--outbox-max-frames", "16")
        opened = poll_open(small).json()
        resume, cursor = opened["frames"][0]["resume_token"], opened["cursor"]
        room = unique("room")
        send(small, resume, [{"t": "subscribe", "room": room}])
        for n in range(30):  # the client does not poll meanwhile
            request(small.port, "POST", "/v1/publish", body={"room": room, "payload": n}, headers=bearer(API_KEY))
        closed, _, _ = poll_until(small, resume, cursor, lambda f: f["t"] == "close")
        self.assertEqual(closed["code"], 4004)


class Probe(unittest.TestCase):
    def test_an_sse_probe_takes_over_a_long_poll_session_on_a_switch_sent_upstream(self):
        tok = token()
        opened = poll_open(server, tok).json()
        resume, cursor = opened["frames"][0]["resume_token"], opened["cursor"]
        probe_ticket = ticket(server, tok, body={"resume": resume, "probe": True})
        stream = EventStream.open(server.port, "/v1/sse?" + query(ticket=probe_ticket, v=1))
        self.addCleanup(stream.close)
        probe_welcome = stream.recv()
        self.assertEqual((probe_welcome["t"], probe_welcome["resumed"]), ("welcome", True))
        self.assertEqual(send(server, resume, [{"t": "switch"}]).status, 204)
        closed, _, _ = poll_until(server, resume, cursor, lambda f: f["t"] == "close")
        self.assertEqual(closed["code"], 4006)
        send(server, resume, [{"t": "ping"}])
        await_frame(stream, "pong")

    def test_a_websocket_probe_takes_over_an_sse_session_on_switch(self):
        tok = token()
        stream, welcome = sse_open(server, tok)
        self.addCleanup(stream.close)
        probe_ticket = ticket(server, tok, body={"resume": welcome["resume_token"], "probe": True})
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=probe_ticket))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1, "resume": welcome["resume_token"]})
        probe_welcome = ws.recv()
        self.assertEqual((probe_welcome["t"], probe_welcome["resumed"]), ("welcome", True))
        self.assertEqual(probe_welcome["session"], welcome["session"])
        ws.send({"t": "switch"})
        closed, _ = await_frame(stream, "close")
        self.assertEqual(closed["code"], 4006)
        ws.send({"t": "ping"})
        await_frame(ws, "pong")

    def test_a_probe_of_an_unknown_session_is_closed_4007(self):
        probe_ticket = ticket(server, body={"resume": "no-such-session", "probe": True})
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=probe_ticket))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1, "resume": "no-such-session"})
        self.assertEqual(ws.expect_close()[0], 4007)


if __name__ == "__main__":
    unittest.main()
