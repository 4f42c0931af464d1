"""Authentication as docs/PROTOCOL.md *Authentication* states it: claims, room patterns, demo
tokens, the JWKS start-up state, the cap on unused tickets."""

import json
import socket
import time
import unittest

from client import assert_error, ticket_response, ws_open
from server import SECRET, start_for_module, start_for_test, token, unique
from wire import b64url, make_jwt, recv_until, request

ISSUER = "https://issuer.example.com/"
AUDIENCE = "rtlink"


def setUpModule():
    global server
    server = start_for_module(
        "--auth-secret", SECRET,
        "--auth-issuer", ISSUER,
        "--auth-audience", AUDIENCE,
        "--auth-default-room", "lobby",
        "--auth-rooms-claim", "scopes",
    )


def claims(**extra):
    return {"sub": unique("user"), "exp": int(time.time()) + 600, "iss": ISSUER, "aud": AUDIENCE, **extra}


def subscribe_answer(ws, room):
    """`subscribed` or the `nack` with the room as id."""
    ws.send({"t": "subscribe", "room": room})

    def answers(frame):
        return (frame.get("t") == "subscribed" and frame.get("room") == room) or (
            frame.get("t") == "nack" and frame.get("id") == room)

    frame, _ = recv_until(ws, answers, answer_pings=ws.send)
    return frame


class Claims(unittest.TestCase):
    def test_a_token_with_the_accepted_issuer_and_audience_is_admitted(self):
        self.assertEqual(ticket_response(server, make_jwt(SECRET, claims())).status, 200)

    def test_an_audience_list_containing_the_accepted_one_is_admitted(self):
        tok = make_jwt(SECRET, claims(aud=["other", AUDIENCE]))
        self.assertEqual(ticket_response(server, tok).status, 200)

    def test_another_audience_is_401_saying_so(self):
        body = assert_error(self, ticket_response(server, make_jwt(SECRET, claims(aud="other"))), 401, "unauthorized")
        self.assertIn("aud", body["message"])

    def test_another_issuer_is_401(self):
        assert_error(self, ticket_response(server, make_jwt(SECRET, claims(iss="https://evil.example/"))),
                     401, "unauthorized")

    def test_a_missing_issuer_or_audience_is_401_once_they_are_configured(self):
        for missing in ("iss", "aud"):
            with self.subTest(missing=missing):
                c = claims()
                del c[missing]
                assert_error(self, ticket_response(server, make_jwt(SECRET, c)), 401, "unauthorized")

    def test_a_token_not_valid_yet_is_401_beyond_the_leeway(self):
        future = make_jwt(SECRET, claims(nbf=int(time.time()) + 120))
        assert_error(self, ticket_response(server, future), 401, "unauthorized")
        within_leeway = make_jwt(SECRET, claims(nbf=int(time.time()) + 2))
        self.assertEqual(ticket_response(server, within_leeway).status, 200)

    def test_an_empty_sub_is_401(self):
        assert_error(self, ticket_response(server, make_jwt(SECRET, claims(sub=""))), 401, "unauthorized")


class RoomPatterns(unittest.TestCase):
    def connect(self, **extra):
        ws, welcome = ws_open(server, make_jwt(SECRET, claims(**extra)))
        self.addCleanup(ws.close)
        return ws

    def test_the_configured_claim_holds_patterns_as_a_space_separated_string(self):
        ws = self.connect(scopes="chat:* news")
        self.assertEqual(subscribe_answer(ws, "chat:42")["t"], "subscribed")
        self.assertEqual(subscribe_answer(ws, "news")["t"], "subscribed")
        nack = subscribe_answer(ws, "newsroom")
        self.assertEqual((nack["t"], nack["code"]), ("nack", "forbidden"))

    def test_the_default_rooms_are_added_for_every_user(self):
        ws = self.connect()
        self.assertEqual(subscribe_answer(ws, "lobby")["t"], "subscribed")
        self.assertEqual(subscribe_answer(ws, "chat:1")["code"], "forbidden")

    def test_the_default_rooms_claim_name_is_not_used_when_another_is_configured(self):
        ws = self.connect(rooms=["*"])
        self.assertEqual(subscribe_answer(ws, "chat:1")["code"], "forbidden")


class Tickets(unittest.TestCase):
    def test_a_user_holding_64_unused_tickets_gets_429(self):
        tok = make_jwt(SECRET, claims())
        for n in range(64):
            self.assertEqual(ticket_response(server, tok).status, 200, n)
        refused = ticket_response(server, tok)
        assert_error(self, refused, 429, "overloaded")
        self.assertIn("retry-after", refused.headers)
        # Another user is not affected.
        self.assertEqual(ticket_response(server, make_jwt(SECRET, claims())).status, 200)


class DemoTokens(unittest.TestCase):
    def test_a_demo_token_is_401_on_a_server_with_the_same_secret_without_demo_auth(self):
        demo_server = start_for_test(self, "--auth-secret", SECRET, "--demo-auth")
        demo = request(demo_server.port, "POST", "/v1/demo-token", body={"name": "Ana"}).json()["token"]
        self.assertEqual(ticket_response(demo_server, demo).status, 200)
        production = start_for_test(self, "--auth-secret", SECRET)
        assert_error(self, ticket_response(production, demo), 401, "unauthorized")


class Jwks(unittest.TestCase):
    def test_tickets_are_503_until_a_jwks_url_has_loaded(self):
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        jwks_server = start_for_test(self, "--auth-jwks", f"http://127.0.0.1:{dead}/jwks.json")
        # An RS256 token naming a key: it can only be checked once the key set is loaded.
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "key-1"}).encode())
        body = b64url(json.dumps(claims()).encode())
        refused = ticket_response(jwks_server, f"{header}.{body}.{b64url(b'not-a-signature')}")
        assert_error(self, refused, 503, "overloaded")
        self.assertIn("retry-after", refused.headers)


if __name__ == "__main__":
    unittest.main()
