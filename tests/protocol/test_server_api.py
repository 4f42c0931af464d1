"""The Server API for backends, with the API key (docs/PROTOCOL.md *Server API*)."""

import time
import unittest
import urllib.parse

from client import (assert_error, await_frame, await_presence_of, poll, poll_open, poll_until, send, sse_open,
                    ticket, ws_open, ws_publish, ws_subscribe)
from server import API_KEY, SECRET, start_for_module, token, unique
from wire import WebSocket, bearer, query, request


HISTORY_SIZE = 6


def setUpModule():
    global server
    server = start_for_module("--auth-secret", SECRET, "--api-key", API_KEY, "--presence-grace", "3s",
                              "--history-max-messages", str(HISTORY_SIZE))


def api(method, path, body=None, key=API_KEY):
    return request(server.port, method, path, body=body, headers=bearer(key) if key else {})


def publish(body, key=API_KEY):
    return api("POST", "/v1/publish", body, key)


class Publish(unittest.TestCase):
    def test_a_publish_is_stored_and_delivered_as_compact_json_text(self):
        room = unique("room")
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        ws_subscribe(ws, room)
        response = publish({"room": room, "payload": {"title": "Release 2.0"}, "name": "Release bot"})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"room": room, "offset": 1, "duplicate": False})
        message, _ = await_frame(ws, "message", room=room)
        self.assertEqual(message["offset"], 1)
        self.assertEqual(message["payload"], '{"title":"Release 2.0"}')
        self.assertEqual(message["sender"], "")
        self.assertEqual(message["name"], "Release bot")

    def test_the_same_id_is_stored_once_and_answered_duplicate(self):
        room = unique("room")
        first = publish({"room": room, "payload": 1, "id": "release-2.0"}).json()
        again = publish({"room": room, "payload": 1, "id": "release-2.0"}).json()
        self.assertEqual(first, {"room": room, "offset": 1, "duplicate": False})
        self.assertEqual(again, {"room": room, "offset": 1, "duplicate": True})
        self.assertEqual(publish({"room": room, "payload": 2}).json()["offset"], 2)

    def test_api_ids_never_collide_with_client_ids(self):
        room = unique("room")
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        ws_subscribe(ws, room)
        ack = ws_publish(ws, room, "from a client", "shared-id")
        self.assertEqual(ack["offset"], 1)
        self.assertEqual(publish({"room": room, "payload": "from the api", "id": "shared-id"}).json(),
                         {"room": room, "offset": 2, "duplicate": False})

    def test_a_user_publish_goes_to_the_escaped_user_room(self):
        response = publish({"user": "auth0|5f7c8e", "payload": {"type": "export-ready"}})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json()["room"], "user:auth0:7C5f7c8e")

    def test_the_user_gets_it_in_their_user_room(self):
        sub = unique("ana") + "@example.com"
        ws, _ = ws_open(server, token(sub=sub, rooms=["lobby"]))
        self.addCleanup(ws.close)
        room = "user:" + sub.replace("@", ":40")
        ws_subscribe(ws, room)
        self.assertEqual(publish({"user": sub, "payload": "ping"}).json()["room"], room)
        message, _ = await_frame(ws, "message", room=room)
        self.assertEqual(message["payload"], '"ping"')

    def test_a_batch_is_published_in_order_and_answered_in_order(self):
        cpu, mem = unique("metrics:cpu"), unique("metrics:mem")
        response = publish({"messages": [{"room": cpu, "payload": 0.42}, {"room": mem, "payload": 0.71},
                                         {"room": cpu, "payload": 0.43}]})
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"results": [
            {"room": cpu, "offset": 1, "duplicate": False},
            {"room": mem, "offset": 1, "duplicate": False},
            {"room": cpu, "offset": 2, "duplicate": False},
        ]})

    def test_one_invalid_message_refuses_the_whole_batch_naming_its_index(self):
        room = unique("room")
        response = publish({"messages": [{"room": room, "payload": 1}, {"room": "bad room", "payload": 2}]})
        body = assert_error(self, response, 400, "invalid_room")
        self.assertIn("messages[1]", body["message"])
        history = api("GET", f"/v1/rooms/{room}/history").json()
        self.assertEqual(history["messages"], [], "nothing of a refused batch is stored")

    def test_an_empty_batch_or_one_over_100_is_400(self):
        assert_error(self, publish({"messages": []}), 400, "bad_request")
        many = [{"room": unique("room"), "payload": n} for n in range(101)]
        assert_error(self, publish({"messages": many}), 400, "bad_request")

    def test_room_and_user_together_or_neither_is_400_bad_request(self):
        assert_error(self, publish({"room": "a", "user": "b", "payload": 1}), 400, "bad_request")
        assert_error(self, publish({"payload": 1}), 400, "bad_request")

    def test_a_missing_payload_is_400_bad_request(self):
        assert_error(self, publish({"room": unique("room")}), 400, "bad_request")

    def test_a_body_that_does_not_parse_is_400_bad_request(self):
        assert_error(self, publish("{nope"), 400, "bad_request")

    def test_a_room_outside_the_rules_is_400_invalid_room(self):
        assert_error(self, publish({"room": "has space", "payload": 1}), 400, "invalid_room")

    def test_a_user_id_too_long_for_a_user_room_is_400_invalid_room(self):
        assert_error(self, publish({"user": "u" * 200, "payload": 1}), 400, "invalid_room")

    def test_an_id_outside_1_to_128_bytes_is_400_bad_request(self):
        for bad_id in ("i" * 129, ""):
            with self.subTest(length=len(bad_id)):
                response = publish({"room": unique("room"), "payload": 1, "id": bad_id})
                assert_error(self, response, 400, "bad_request")

    def test_a_payload_over_max_frame_bytes_is_413_too_large(self):
        response = publish({"room": unique("room"), "payload": "x" * 70_000})
        assert_error(self, response, 413, "too_large")

    def test_a_body_over_8_mib_is_413_too_large(self):
        response = publish('{"room": "big", "payload": "' + "x" * (8 * 1024 * 1024 + 10) + '"}')
        assert_error(self, response, 413, "too_large")


class ApiKey(unittest.TestCase):
    def test_a_missing_key_is_401_with_www_authenticate_bearer(self):
        response = publish({"room": "a", "payload": 1}, key=None)
        assert_error(self, response, 401, "unauthorized")
        self.assertTrue(response.headers.get("www-authenticate", "").startswith("Bearer"), response.headers)

    def test_a_wrong_key_is_401_on_every_endpoint(self):
        for method, path in (("POST", "/v1/publish"), ("GET", "/v1/rooms/lobby/presence"),
                             ("GET", "/v1/rooms/lobby/history"), ("DELETE", "/v1/users/ana/sessions")):
            with self.subTest(path=path):
                response = api(method, path, {"room": "a", "payload": 1} if method == "POST" else None,
                               key="not-the-key-0123456789")
                assert_error(self, response, 401, "unauthorized")
                self.assertTrue(response.headers.get("www-authenticate", "").startswith("Bearer"))

    def test_a_user_token_is_not_an_api_key(self):
        assert_error(self, publish({"room": "a", "payload": 1}, key=token()), 401, "unauthorized")


class Presence(unittest.TestCase):
    def test_members_are_sorted_by_user_with_their_connections(self):
        room = unique("room")
        ana_sub, bob_sub = unique("a-ana"), unique("b-bob")
        ana_tok = token(sub=ana_sub, name="Ana")
        ana1, ana1_w = ws_open(server, ana_tok)
        ana2, ana2_w = ws_open(server, ana_tok)
        bob, bob_w = ws_open(server, token(sub=bob_sub, name="Bob"))
        for ws in (ana1, ana2, bob):
            self.addCleanup(ws.close)
        ws_subscribe(bob, room)
        ws_subscribe(ana1, room)
        ws_subscribe(ana2, room)
        ana1.send({"t": "presence", "room": room, "meta": '{"status":"away"}'})
        await_presence_of(bob, "presence_update", room, ana1_w["session"])

        response = api("GET", f"/v1/rooms/{room}/presence")
        self.assertEqual(response.status, 200, response)
        body = response.json()
        self.assertEqual((body["room"], body["connections"]), (room, 3))
        self.assertEqual([m["user"] for m in body["members"]], [ana_sub, bob_sub])
        ana = body["members"][0]
        self.assertEqual((ana["name"], ana["connections"]), ("Ana", 2))
        self.assertEqual(sorted((c["session"], c["meta"]) for c in ana["conns"]),
                         sorted([(ana1_w["session"], '{"status":"away"}'), (ana2_w["session"], "")]))
        self.assertEqual(body["members"][1]["conns"], [{"session": bob_w["session"], "meta": ""}])

    def test_an_empty_room_has_no_members(self):
        room = unique("room")
        body = api("GET", f"/v1/rooms/{room}/presence").json()
        self.assertEqual(body, {"room": room, "connections": 0, "members": []})

    def test_an_invalid_room_is_400_invalid_room(self):
        assert_error(self, api("GET", "/v1/rooms/" + urllib.parse.quote("bad room") + "/presence"), 400, "invalid_room")


class History(unittest.TestCase):
    def fill(self, n):
        room = unique("room")
        for i in range(1, n + 1):
            publish({"room": room, "payload": {"text": f"m{i}"}, "name": "Bot", "sender": "bot"})
        return room

    def test_without_since_the_newest_limit_messages_oldest_first(self):
        room = self.fill(5)
        before = int(time.time() * 1000) + 1
        response = api("GET", f"/v1/rooms/{room}/history?limit=2")
        self.assertEqual(response.status, 200, response)
        body = response.json()
        self.assertEqual((body["room"], body["head"], body["complete"]), (room, 5, True))
        self.assertIsInstance(body["epoch"], str)
        self.assertEqual([m["offset"] for m in body["messages"]], [4, 5])
        message = body["messages"][0]
        self.assertEqual((message["sender"], message["name"], message["payload"]), ("bot", "Bot", '{"text":"m4"}'))
        self.assertIsInstance(message["stored_at_ms"], int)
        self.assertLessEqual(message["stored_at_ms"], before)

    def test_with_since_the_first_limit_messages_after_it(self):
        room = self.fill(5)
        body = api("GET", f"/v1/rooms/{room}/history?since=1&limit=2").json()
        self.assertEqual([m["offset"] for m in body["messages"]], [2, 3])
        body = api("GET", f"/v1/rooms/{room}/history?since=3&limit=2").json()
        self.assertEqual([m["offset"] for m in body["messages"]], [4, 5])

    def test_the_epoch_is_the_one_subscribers_get(self):
        room = self.fill(1)
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        subscribed, _ = ws_subscribe(ws, room)
        self.assertEqual(api("GET", f"/v1/rooms/{room}/history").json()["epoch"], subscribed["epoch"])

    def test_trimmed_messages_make_the_answer_incomplete(self):
        room = self.fill(HISTORY_SIZE + 2)
        body = api("GET", f"/v1/rooms/{room}/history?since=0").json()
        self.assertIs(body["complete"], False)
        self.assertEqual([m["offset"] for m in body["messages"]], list(range(3, HISTORY_SIZE + 3)))

    def test_a_since_before_the_trimmed_history_is_not_recovered_and_continues_after_head(self):
        room = self.fill(HISTORY_SIZE + 2)
        ws, _ = ws_open(server)
        self.addCleanup(ws.close)
        subscribed, after = ws_subscribe(ws, room, since=0)
        self.assertEqual((subscribed["recovered"], subscribed["head"]), (False, HISTORY_SIZE + 2))
        publish({"room": room, "payload": "live"})
        message, _ = await_frame(ws, "message", room=room)
        self.assertEqual(message["offset"], HISTORY_SIZE + 3)

    def test_a_message_without_name_has_name_null(self):
        room = unique("room")
        publish({"room": room, "payload": 1})
        self.assertIsNone(api("GET", f"/v1/rooms/{room}/history").json()["messages"][0]["name"])

    def test_a_limit_outside_1_to_the_history_size_is_400_bad_request(self):
        room = self.fill(1)
        for limit in (0, HISTORY_SIZE + 1):
            with self.subTest(limit=limit):
                assert_error(self, api("GET", f"/v1/rooms/{room}/history?limit={limit}"), 400, "bad_request")
        self.assertEqual(len(api("GET", f"/v1/rooms/{room}/history?limit={HISTORY_SIZE}").json()["messages"]), 1)

    def test_a_malformed_query_is_400_bad_request(self):
        assert_error(self, api("GET", f"/v1/rooms/{unique('room')}/history?limit=lots"), 400, "bad_request")

    def test_an_invalid_room_is_400_invalid_room(self):
        assert_error(self, api("GET", "/v1/rooms/" + urllib.parse.quote("bad room") + "/history"), 400, "invalid_room")


class DisconnectUser(unittest.TestCase):
    def test_every_session_of_the_user_is_closed_4013_and_cannot_resume(self):
        sub = unique("ana")
        tok = token(sub=sub)
        room = unique("room")
        first, first_w = ws_open(server, tok)
        second, _ = ws_open(server, tok)
        watcher, _ = ws_open(server)
        self.addCleanup(watcher.close)
        ws_subscribe(watcher, room)
        ws_subscribe(first, room)
        await_presence_of(watcher, "presence_join", room, first_w["session"])

        response = api("DELETE", f"/v1/users/{sub}/sessions")
        self.assertEqual(response.status, 200, response)
        self.assertEqual(response.json(), {"user": sub, "closed": 2})
        for ws in (first, second):
            self.assertEqual(ws.expect_close()[0], 4013)
        # At once: well before the presence grace period (3 s) would have ended it.
        await_presence_of(watcher, "presence_leave", room, first_w["session"], timeout=2)

        again, welcome = ws_open(server, tok, resume=first_w["resume_token"])
        self.addCleanup(again.close)
        self.assertIs(welcome["resumed"], False)

    def test_sse_and_long_poll_sessions_get_close_4013_in_band(self):
        sub = unique("ana")
        stream, sse_welcome = sse_open(server, token(sub=sub))
        self.addCleanup(stream.close)
        opened = poll_open(server, token(sub=sub)).json()
        resume, cursor = opened["frames"][0]["resume_token"], opened["cursor"]

        self.assertEqual(api("DELETE", f"/v1/users/{sub}/sessions").json(), {"user": sub, "closed": 2})
        closed, _ = await_frame(stream, "close")
        self.assertEqual(closed["code"], 4013)
        # The long-polling client was between two polls: a send it makes first is taken (not
        # `404 unknown_session`, which would mean "start a new session"), its next poll carries
        # the close.
        self.assertEqual(send(server, resume, [{"t": "ping"}]).status, 204)
        polled = poll(server, resume, cursor)
        self.assertEqual(polled.status, 200, polled)
        self.assertEqual([(f["t"], f["code"]) for f in polled.json()["frames"]], [("close", 4013)])
        # A send of the SSE client crossing the close on its stream is taken too.
        self.assertEqual(send(server, sse_welcome["resume_token"], [{"t": "ping"}]).status, 204)

    def test_a_session_ended_while_its_connection_was_down_closes_every_open_resuming_it_4013(self):
        sub = unique("ana")
        room = unique("room")
        watcher, _ = ws_open(server)
        self.addCleanup(watcher.close)
        ws_subscribe(watcher, room)
        ws, welcome = ws_open(server, token(sub=sub))
        ws_subscribe(ws, room)
        resume = welcome["resume_token"]
        ws.sock.close()  # the connection is cut: the session waits to be resumed
        # The presence grace period (3 s) passes only while the session is detached.
        await_presence_of(watcher, "presence_leave", room, welcome["session"])
        self.assertEqual(api("DELETE", f"/v1/users/{sub}/sessions").json(), {"user": sub, "closed": 1})

        # Every transport that resumes it gets the close instead of a new session.
        t = ticket(server, token(sub=sub), {"resume": resume})
        again = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t))
        self.addCleanup(again.close)
        again.send({"t": "hello", "v": 1, "resume": resume})
        self.assertEqual(again.expect_close()[::2], (4013, []))
        stream, first = sse_open(server, token(sub=sub), ticket_body={"resume": resume})
        self.addCleanup(stream.close)
        self.assertEqual((first["t"], first["code"]), ("close", 4013))
        self.assertIsNone(stream.next_event(timeout=5), "nothing follows the close")
        t = ticket(server, token(sub=sub), {"resume": resume})
        opened = request(server.port, "GET", "/v1/poll?" + query(ticket=t, v=1))
        self.assertEqual(opened.status, 200, opened)
        self.assertEqual([(f["t"], f["code"]) for f in opened.json()["frames"]], [("close", 4013)])
        self.assertEqual(send(server, resume, [{"t": "ping"}]).status, 204)
        # The token of another user's ended session is no way to stop someone: a new session.
        other, other_welcome = ws_open(server, token(sub=unique("eve")), resume=resume)
        self.addCleanup(other.close)
        self.assertIs(other_welcome["resumed"], False)

    def test_a_user_without_sessions_is_closed_0(self):
        sub = unique("nobody")
        self.assertEqual(api("DELETE", f"/v1/users/{sub}/sessions").json(), {"user": sub, "closed": 0})


if __name__ == "__main__":
    unittest.main()
