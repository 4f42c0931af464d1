"""The WebSocket transport: hello/welcome, rooms, publish/ack, delivery, dedup, resume, presence,
typing, nacks and close codes (docs/PROTOCOL.md *Frames*, *Close codes*, *Sessions, resume and
limits*)."""

import json
import struct
import unittest

from client import await_frame, await_presence_of, ticket, ws_open, ws_publish, ws_subscribe
from server import SECRET, start_for_module, token, unique
from wire import OP_TEXT, WebSocket, encode_frame, query

PRESENCE_GRACE_MS = 3000
TYPING_TTL_MS = 1000
MAX_ROOMS = 4
MAX_ROOMS_PER_USER = 6


def setUpModule():
    global server
    server = start_for_module(
        "--auth-secret", SECRET,
        "--presence-grace", f"{PRESENCE_GRACE_MS}ms",
        "--typing-ttl", f"{TYPING_TTL_MS}ms",
        "--max-rooms", str(MAX_ROOMS),
        "--max-rooms-per-user", str(MAX_ROOMS_PER_USER),
    )


def connect(tok=None, **kw):
    ws, welcome = ws_open(server, tok, **kw)
    return ws, welcome


class Handshake(unittest.TestCase):
    def test_welcome_carries_every_documented_field(self):
        ws, welcome = connect(token(sub="ana-hs", name="Ana"))
        self.addCleanup(ws.close)
        self.assertEqual(welcome["v"], 1)
        self.assertIsInstance(welcome["session"], str)
        self.assertIsInstance(welcome["resume_token"], str)
        self.assertIs(welcome["resumed"], False)
        self.assertIsInstance(welcome["ping_interval_ms"], int)
        self.assertEqual(welcome["user"], {"id": "ana-hs", "name": "Ana"})
        limits = welcome["limits"]
        for name in ("max_frame_bytes", "rate_per_sec", "burst", "max_rooms", "resume_window_ms",
                     "dedupe_window_ms", "max_batch_bytes", "publish_bytes_per_sec", "publish_bytes_burst"):
            self.assertIsInstance(limits.get(name), int, name)
        self.assertEqual(limits["max_frame_bytes"], 65536)  # the documented default
        self.assertEqual(limits["max_batch_bytes"], limits["max_frame_bytes"] + 4096)
        self.assertEqual(limits["max_rooms"], MAX_ROOMS)
        self.assertEqual(limits["resume_window_ms"], 120_000)
        self.assertEqual(limits["dedupe_window_ms"], 120_000)

    def test_ping_is_answered_with_pong(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        ws.send({"t": "ping"})
        await_frame(ws, "pong")

    def test_unknown_fields_are_ignored(self):
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=ticket(server)))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1, "future_field": [1, 2]})
        self.assertEqual(ws.recv()["t"], "welcome")

    def test_resuming_an_unknown_session_gets_a_new_one(self):
        ws, welcome = connect(resume="no-such-session-token")
        self.addCleanup(ws.close)
        self.assertIs(welcome["resumed"], False)


class BadInputCloses(unittest.TestCase):
    """Each documented close code for bad input, read as the WebSocket close code."""

    def opened(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        return ws

    def test_another_protocol_version_is_closed_4002(self):
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=ticket(server)))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 2})
        code, _, frames = ws.expect_close()
        self.assertEqual(code, 4002, frames)

    def test_a_frame_that_does_not_parse_is_closed_4000(self):
        ws = self.opened()
        ws.send("{this is not json")
        self.assertEqual(ws.expect_close()[0], 4000)

    def test_an_unknown_client_frame_type_is_closed_4000(self):
        ws = self.opened()
        ws.send({"t": "teleport", "room": "x"})
        self.assertEqual(ws.expect_close()[0], 4000)

    def test_a_frame_without_a_required_field_is_closed_4000(self):
        ws = self.opened()
        ws.send({"t": "publish", "room": "x"})
        self.assertEqual(ws.expect_close()[0], 4000)

    def test_an_oversized_frame_is_closed_4001_from_its_header(self):
        ws = self.opened()
        # Only the header of a 65,537-byte text frame: the payload is never sent.
        header = bytes([0x80 | OP_TEXT, 0x80 | 127]) + struct.pack("!Q", 65536 + 1) + b"\0\0\0\0"
        ws.send_raw(header)
        self.assertEqual(ws.expect_close()[0], 4001)

    def test_an_oversized_message_in_fragments_is_closed_4001(self):
        ws = self.opened()
        chunk = b"x" * 40_000
        ws.send_raw(encode_frame(OP_TEXT, chunk, fin=False))
        ws.send_raw(encode_frame(0x0, chunk, fin=True))
        self.assertEqual(ws.expect_close()[0], 4001)

    def test_a_second_hello_is_closed_4012(self):
        ws = self.opened()
        ws.send({"t": "hello", "v": 1})
        self.assertEqual(ws.expect_close()[0], 4012)

    def test_a_first_frame_other_than_hello_is_closed_4012(self):
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=ticket(server)))
        self.addCleanup(ws.close)
        ws.send({"t": "subscribe", "room": "lobby"})
        code, _, frames = ws.expect_close()
        self.assertEqual(frames, [])
        self.assertEqual(code, 4012)


class RoomsAndMessages(unittest.TestCase):
    def test_subscribe_answers_subscribed_then_a_presence_snapshot(self):
        ws, welcome = connect(token(name="Ana"))
        self.addCleanup(ws.close)
        room = unique("room")
        ws.send({"t": "subscribe", "room": room})
        subscribed = ws.recv()
        self.assertEqual(subscribed["t"], "subscribed")
        self.assertEqual(subscribed["room"], room)
        self.assertEqual(subscribed["head"], 0)
        self.assertIs(subscribed["recovered"], True)
        self.assertIsInstance(subscribed["epoch"], str)
        snapshot, _ = await_frame(ws, "presence_snapshot", room=room)
        me = {"session": welcome["session"], "user": welcome["user"]["id"], "name": "Ana", "meta": ""}
        self.assertEqual(snapshot["conns"], [me])

    def test_the_snapshot_already_holds_the_subscribers_own_connection(self):
        # The document says the subscriber *may* then also get its own presence_join (an
        # upsert): whether it does depends on whether the join was routed while the snapshot
        # went out, so only the snapshot is checked.
        ws, welcome = connect()
        self.addCleanup(ws.close)
        room = unique("room")
        _, frames = ws_subscribe(ws, room)
        own = [c for c in frames[-1]["conns"] if c["session"] == welcome["session"]]
        self.assertEqual(len(own), 1, frames[-1])
        self.assertEqual(own[0]["user"], welcome["user"]["id"])

    def test_publish_is_acked_and_delivered_with_offsets(self):
        room = unique("room")
        ana, ana_welcome = connect(token(name="Ana"))
        bob, _ = connect()
        self.addCleanup(ana.close)
        self.addCleanup(bob.close)
        ws_subscribe(ana, room)
        ws_subscribe(bob, room)
        ana_frames = []
        for n in (1, 2):
            ack = ws_publish(ana, room, json.dumps({"n": n}), f"p{n}", skipped=ana_frames)
            self.assertEqual(ack, {"t": "ack", "id": f"p{n}", "room": room, "offset": n})
        for n in (1, 2):
            message, _ = await_frame(bob, "message", room=room)
            self.assertEqual(message["offset"], n)
            self.assertEqual(message["sender"], ana_welcome["user"]["id"])
            self.assertEqual(message["name"], "Ana")
            self.assertEqual(message["payload"], json.dumps({"n": n}))
        # The publisher gets its own messages too (it is a subscriber), before or after its acks.
        own = [f for f in ana_frames if f["t"] == "message"]
        while len(own) < 2:
            own.append(await_frame(ana, "message", room=room)[0])
        self.assertEqual([(m["offset"], m["payload"]) for m in own], [(n, json.dumps({"n": n})) for n in (1, 2)])

    def test_a_resent_publish_id_gets_the_original_ack_and_is_stored_once(self):
        room = unique("room")
        ana, _ = connect()
        bob, _ = connect()
        self.addCleanup(ana.close)
        self.addCleanup(bob.close)
        ws_subscribe(ana, room)
        ws_subscribe(bob, room)
        first = ws_publish(ana, room, "once", "same-id")
        again = ws_publish(ana, room, "once", "same-id")
        self.assertEqual(again, first)
        ws_publish(ana, room, "next", "other-id")
        first_msg, _ = await_frame(bob, "message", room=room)
        next_msg, _ = await_frame(bob, "message", room=room)
        self.assertEqual((first_msg["offset"], first_msg["payload"]), (1, "once"))
        self.assertEqual((next_msg["offset"], next_msg["payload"]), (2, "next"))

    def test_a_publish_id_is_deduplicated_per_user_across_sessions(self):
        room = unique("room")
        tok = token()
        first, _ = connect(tok)
        second, _ = connect(tok)
        stranger, _ = connect()
        for ws in (first, second, stranger):
            self.addCleanup(ws.close)
            ws_subscribe(ws, room)
        self.assertEqual(ws_publish(first, room, "x", "shared")["offset"], 1)
        self.assertEqual(ws_publish(second, room, "x", "shared")["offset"], 1)
        self.assertEqual(ws_publish(stranger, room, "x", "shared")["offset"], 2)

    def test_presence_and_typing_outside_a_subscribed_room_are_nacked_with_the_room_as_id(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        for frame in ({"t": "presence", "meta": "x"}, {"t": "typing", "active": True}):
            with self.subTest(t=frame["t"]):
                room = unique("room")
                ws.send({**frame, "room": room})
                nack, _ = await_frame(ws, "nack", id=room)
                self.assertEqual(nack["code"], "not_subscribed")

    def test_publishing_without_subscribing_is_nacked_not_subscribed(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        nack = ws_publish(ws, unique("room"), "x", "p1")
        self.assertEqual(nack["t"], "nack")
        self.assertEqual(nack["code"], "not_subscribed")
        self.assertIsInstance(nack["reason"], str)

    def test_a_publish_id_over_128_bytes_is_nacked_too_large(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        room = unique("room")
        ws_subscribe(ws, room)
        long_id = "i" * 129
        nack = ws_publish(ws, room, "x", long_id)
        self.assertEqual((nack["t"], nack["code"]), ("nack", "too_large"))

    def test_a_room_outside_the_tokens_patterns_is_nacked_forbidden(self):
        ws, _ = connect(token(rooms=["chat:*"]))
        self.addCleanup(ws.close)
        ws.send({"t": "subscribe", "room": "news"})
        nack, _ = await_frame(ws, "nack", id="news")
        self.assertEqual(nack["code"], "forbidden")
        ws.send({"t": "subscribe", "room": "chat:1"})
        await_frame(ws, "subscribed", room="chat:1")

    def test_an_invalid_room_name_is_nacked_invalid_room(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        for room in ("has space", "x" * 129, ""):
            with self.subTest(room=room):
                ws.send({"t": "subscribe", "room": room})
                nack, _ = await_frame(ws, "nack", id=room)
                self.assertEqual(nack["code"], "invalid_room")

    def test_another_users_room_is_forbidden_even_with_star(self):
        ws, welcome = connect(token(sub="ana@example.com", rooms=["*"]))
        self.addCleanup(ws.close)
        ws.send({"t": "subscribe", "room": "user:bob"})
        nack, _ = await_frame(ws, "nack", id="user:bob")
        self.assertEqual(nack["code"], "forbidden")
        ws.send({"t": "subscribe", "room": "user:ana:40example.com"})
        await_frame(ws, "subscribed", room="user:ana:40example.com")

    def test_more_rooms_than_max_rooms_is_nacked_too_many_rooms(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        for _ in range(MAX_ROOMS):
            ws_subscribe(ws, unique("room"))
        extra = unique("room")
        ws.send({"t": "subscribe", "room": extra})
        nack, _ = await_frame(ws, "nack", id=extra)
        self.assertEqual(nack["code"], "too_many_rooms")

    def test_unsubscribe_answers_unsubscribed_and_stops_delivery(self):
        room = unique("room")
        ana, _ = connect()
        bob, _ = connect()
        self.addCleanup(ana.close)
        self.addCleanup(bob.close)
        ws_subscribe(ana, room)
        ws_subscribe(bob, room)
        bob.send({"t": "unsubscribe", "room": room})
        await_frame(bob, "unsubscribed", room=room)
        ws_publish(ana, room, "after", "a1")
        bob.send({"t": "ping"})
        _, skipped = await_frame(bob, "pong")
        self.assertEqual([f for f in skipped if f["t"] == "message"], [])

    def test_unsubscribing_a_room_not_subscribed_is_answered_unsubscribed(self):
        ws, _ = connect()
        self.addCleanup(ws.close)
        room = unique("room")
        ws.send({"t": "unsubscribe", "room": room})
        await_frame(ws, "unsubscribed", room=room)

    def test_more_subscriptions_than_the_users_cap_are_nacked_too_many_rooms(self):
        tok = token()
        first, _ = connect(tok)
        second, _ = connect(tok)
        for ws in (first, second):
            self.addCleanup(ws.close)
        # Below each session's max_rooms, at the user's cap over both sessions.
        for _ in range(MAX_ROOMS):
            ws_subscribe(first, unique("room"))
        for _ in range(MAX_ROOMS_PER_USER - MAX_ROOMS):
            ws_subscribe(second, unique("room"))
        extra = unique("room")
        second.send({"t": "subscribe", "room": extra})
        nack, _ = await_frame(second, "nack", id=extra)
        self.assertEqual(nack["code"], "too_many_rooms")

    def test_history_n_replays_the_most_recent_messages(self):
        room = unique("room")
        ana, _ = connect()
        self.addCleanup(ana.close)
        ws_subscribe(ana, room)
        for n in range(1, 6):
            ws_publish(ana, room, f"m{n}", f"h{n}")
        bob, _ = connect()
        self.addCleanup(bob.close)
        subscribed, after = ws_subscribe(bob, room, history=2)
        self.assertEqual((subscribed["head"], subscribed["recovered"]), (3, True))
        replay = [f for f in after if f["t"] == "message"]
        if len(replay) < 2:
            replay += [await_frame(bob, "message", room=room)[0] for _ in range(2 - len(replay))]
        self.assertEqual([(m["offset"], m["payload"]) for m in replay], [(4, "m4"), (5, "m5")])


class Resume(unittest.TestCase):
    def test_a_reconnect_resumes_the_session_and_replays_only_what_was_missed(self):
        room = unique("room")
        tok = token()
        ana, welcome = connect(tok)
        ws_subscribe(ana, room)
        bob, _ = connect()
        self.addCleanup(bob.close)
        subscribed, _ = ws_subscribe(bob, room)
        ws_publish(bob, room, "one", "r1")
        await_frame(ana, "message", room=room, offset=1)
        ana.drop()
        ws_publish(bob, room, "two", "r2")
        ws_publish(bob, room, "three", "r3")

        ana, again = connect(tok, resume=welcome["resume_token"])
        self.addCleanup(ana.close)
        self.assertIs(again["resumed"], True)
        self.assertEqual(again["session"], welcome["session"])
        ana.send({"t": "subscribe", "room": room, "since": 1, "epoch": subscribed["epoch"]})
        resubscribed, _ = await_frame(ana, "subscribed", room=room)
        self.assertEqual((resubscribed["recovered"], resubscribed["head"]), (True, 3))
        ws_publish(bob, room, "four", "r4")
        offsets = []
        while not offsets or offsets[-1] < 4:
            message, _ = await_frame(ana, "message", room=room)
            offsets.append(message["offset"])
        self.assertEqual(offsets, [2, 3, 4])

    def test_a_client_close_ends_the_session_with_1000(self):
        tok = token()
        ws, welcome = connect(tok)
        ws.send({"t": "close", "code": 1000, "reason": "bye"})
        self.assertEqual(ws.expect_close()[0], 1000)
        again, resumed = connect(tok, resume=welcome["resume_token"])
        self.addCleanup(again.close)
        self.assertIs(resumed["resumed"], False)

    def test_a_resume_with_narrower_rooms_leaves_the_rooms_no_longer_allowed(self):
        sub = unique("user")
        ws, welcome = connect(token(sub=sub, rooms=["chat:*", "lobby"]))
        room = unique("chat:")
        ws_subscribe(ws, room)
        ws_subscribe(ws, "lobby")
        ws.drop()
        again, resumed = connect(token(sub=sub, rooms=["lobby"]), resume=welcome["resume_token"])
        self.addCleanup(again.close)
        self.assertIs(resumed["resumed"], True)
        nack, _ = await_frame(again, "nack", id=room)
        self.assertEqual(nack["code"], "forbidden")
        await_frame(again, "unsubscribed", room=room)

    def test_another_users_resume_token_opens_a_new_session(self):
        ana, ana_welcome = connect()
        self.addCleanup(ana.close)
        bob, bob_welcome = connect(resume=ana_welcome["resume_token"])
        self.addCleanup(bob.close)
        self.assertIs(bob_welcome["resumed"], False)
        self.assertNotEqual(bob_welcome["session"], ana_welcome["session"])

    def test_a_probe_of_another_users_session_is_closed_4007(self):
        ana, ana_welcome = connect()
        self.addCleanup(ana.close)
        probe = ticket(server, body={"resume": ana_welcome["resume_token"], "probe": True})
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=probe))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1, "resume": ana_welcome["resume_token"]})
        self.assertEqual(ws.expect_close()[0], 4007)
        ana.send({"t": "ping"})
        await_frame(ana, "pong")

    def test_a_since_past_the_rooms_head_is_not_recovered(self):
        room = unique("room")
        ws, _ = connect()
        self.addCleanup(ws.close)
        subscribed, _ = ws_subscribe(ws, room)
        ws_publish(ws, room, "a", "h1")
        other, _ = connect()
        self.addCleanup(other.close)
        other.send({"t": "subscribe", "room": room, "since": 100, "epoch": subscribed["epoch"]})
        answer, _ = await_frame(other, "subscribed", room=room)
        self.assertEqual((answer["recovered"], answer["head"]), (False, 1))

    def test_subscribing_again_replays_without_a_second_presence_join(self):
        room = unique("room")
        ana, ana_welcome = connect()
        bob, _ = connect()
        for ws in (ana, bob):
            self.addCleanup(ws.close)
        subscribed, _ = ws_subscribe(bob, room)
        ws_subscribe(ana, room)
        await_presence_of(bob, "presence_join", room, ana_welcome["session"])
        ws_publish(bob, room, "one", "again1")
        ana.send({"t": "subscribe", "room": room, "since": 0, "epoch": subscribed["epoch"]})
        again, _ = await_frame(ana, "subscribed", room=room)
        self.assertEqual((again["recovered"], again["head"]), (True, 1))
        replayed, _ = await_frame(ana, "message", room=room)
        self.assertEqual(replayed["offset"], 1)
        bob.send({"t": "ping"})
        _, before_pong = await_frame(bob, "pong")
        self.assertEqual([f for f in before_pong if f["t"].startswith("presence")], [])

    def test_a_since_from_another_epoch_is_not_recovered(self):
        room = unique("room")
        ws, _ = connect()
        self.addCleanup(ws.close)
        ws_subscribe(ws, room)
        ws_publish(ws, room, "a", "e1")
        ws_publish(ws, room, "b", "e2")
        other, _ = connect()
        self.addCleanup(other.close)
        other.send({"t": "subscribe", "room": room, "since": 1, "epoch": "not-this-rooms-epoch"})
        subscribed, _ = await_frame(other, "subscribed", room=room)
        self.assertIs(subscribed["recovered"], False)

    def test_a_resume_token_works_in_the_ticket_too(self):
        tok = token()
        ws, welcome = connect(tok)
        ws.drop()
        t = ticket(server, tok, body={"resume": welcome["resume_token"]})
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t))
        self.addCleanup(ws.close)
        ws.send({"t": "hello", "v": 1})
        again, _ = await_frame(ws, "welcome")
        self.assertEqual((again["resumed"], again["session"]), (True, welcome["session"]))


class Presence(unittest.TestCase):
    def test_join_update_and_leave_on_unsubscribe(self):
        room = unique("room")
        ana, _ = connect()
        self.addCleanup(ana.close)
        ws_subscribe(ana, room)
        bob, bob_welcome = connect(token(name="Bob"))
        self.addCleanup(bob.close)
        ws_subscribe(bob, room)
        join, _ = await_presence_of(ana, "presence_join", room, bob_welcome["session"])
        conn = {"session": bob_welcome["session"], "user": bob_welcome["user"]["id"], "name": "Bob", "meta": ""}
        self.assertEqual(join["conn"], conn)

        bob.send({"t": "presence", "room": room, "meta": '{"status":"away"}'})
        update, _ = await_presence_of(ana, "presence_update", room, bob_welcome["session"])
        self.assertEqual(update["conn"], {**conn, "meta": '{"status":"away"}'})

        bob.send({"t": "unsubscribe", "room": room})
        leave, _ = await_presence_of(ana, "presence_leave", room, bob_welcome["session"])
        self.assertEqual(leave, {"t": "presence_leave", "room": room,
                                 "session": bob_welcome["session"], "user": bob_welcome["user"]["id"]})

    def test_a_dropped_connection_leaves_after_the_grace_period(self):
        room = unique("room")
        ana, _ = connect()
        self.addCleanup(ana.close)
        ws_subscribe(ana, room)
        bob, bob_welcome = connect()
        ws_subscribe(bob, room)
        await_presence_of(ana, "presence_join", room, bob_welcome["session"])
        bob.drop()
        leave, _ = await_frame(ana, "presence_leave", room=room, timeout=PRESENCE_GRACE_MS / 1000 + 5)
        self.assertEqual(leave["session"], bob_welcome["session"])

    def test_a_close_frame_leaves_at_once(self):
        room = unique("room")
        ana, _ = connect()
        self.addCleanup(ana.close)
        ws_subscribe(ana, room)
        bob, bob_welcome = connect()
        ws_subscribe(bob, room)
        await_presence_of(ana, "presence_join", room, bob_welcome["session"])
        bob.send({"t": "close", "code": 1000, "reason": "bye"})
        # At once: well before the grace period would have ended it.
        leave, _ = await_frame(ana, "presence_leave", room=room, timeout=PRESENCE_GRACE_MS / 1000 * 2 / 3)
        self.assertEqual(leave["session"], bob_welcome["session"])
        bob.drop()

    def test_presence_meta_over_1024_bytes_is_nacked_too_large_with_the_room_as_id(self):
        room = unique("room")
        ws, _ = connect()
        self.addCleanup(ws.close)
        ws_subscribe(ws, room)
        ws.send({"t": "presence", "room": room, "meta": "m" * 1025})
        nack, _ = await_frame(ws, "nack", id=room)
        self.assertEqual(nack["code"], "too_large")


class Typing(unittest.TestCase):
    def test_typing_is_relayed_and_ended_by_the_server_after_its_ttl(self):
        room = unique("room")
        ana, _ = connect()
        self.addCleanup(ana.close)
        ws_subscribe(ana, room)
        bob, bob_welcome = connect(token(name="Bob"))
        self.addCleanup(bob.close)
        ws_subscribe(bob, room)
        bob.send({"t": "typing", "room": room, "active": True})
        started, _ = await_frame(ana, "typing", room=room)
        self.assertEqual(started, {"t": "typing", "room": room, "user": bob_welcome["user"]["id"],
                                   "name": "Bob", "active": True})
        stopped, _ = await_frame(ana, "typing", room=room, timeout=TYPING_TTL_MS / 1000 + 5)
        self.assertIs(stopped["active"], False)


if __name__ == "__main__":
    unittest.main()
