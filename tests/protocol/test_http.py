"""Tickets, transport opens and their refusals, /healthz, /metrics, CORS (docs/PROTOCOL.md
*Endpoints*, *HTTP errors*, *Authentication*)."""

import time
import unittest

from client import assert_error, ticket, ticket_response, ws_open
from server import API_KEY, SECRET, start_for_module, token, unique
from wire import UpgradeRefused, WebSocket, bearer, make_jwt, query, request

ALLOWED_ORIGIN = "https://app.example.com"


def setUpModule():
    global server
    server = start_for_module("--auth-secret", SECRET, "--allowed-origin", ALLOWED_ORIGIN, "--api-key", API_KEY)


class TicketExchange(unittest.TestCase):
    def test_a_valid_token_gets_a_ticket_and_its_lifetime(self):
        response = ticket_response(server, token())
        self.assertEqual(response.status, 200, response)
        body = response.json()
        self.assertIsInstance(body["ticket"], str)
        self.assertTrue(body["ticket"])
        self.assertIsInstance(body["expires_in_ms"], int)
        self.assertTrue(0 < body["expires_in_ms"] <= 30_000, body)

    def test_an_empty_object_body_is_a_plain_ticket(self):
        self.assertEqual(ticket_response(server, token(), body={}).status, 200)

    def test_a_missing_authorization_header_is_401_unauthorized(self):
        assert_error(self, ticket_response(server, None), 401, "unauthorized")

    def test_a_forged_signature_is_401_unauthorized(self):
        forged = token(secret="another-secret-of-at-least-32-bytes-long!")
        assert_error(self, ticket_response(server, forged), 401, "unauthorized")

    def test_an_expired_token_is_401_saying_it_expired(self):
        body = assert_error(self, ticket_response(server, token(exp_in=-600)), 401, "unauthorized")
        self.assertIn("expired", body["message"])

    def test_alg_none_is_401_unauthorized(self):
        unsigned = make_jwt(SECRET, {"sub": unique("u"), "exp": int(time.time()) + 60}, alg="none")
        assert_error(self, ticket_response(server, unsigned), 401, "unauthorized")

    def test_a_token_without_sub_is_401_unauthorized(self):
        no_sub = make_jwt(SECRET, {"exp": int(time.time()) + 60, "rooms": ["*"]})
        assert_error(self, ticket_response(server, no_sub), 401, "unauthorized")

    def test_a_token_without_exp_is_401_unauthorized(self):
        no_exp = make_jwt(SECRET, {"sub": unique("u"), "rooms": ["*"]})
        assert_error(self, ticket_response(server, no_exp), 401, "unauthorized")

    def test_a_ticket_body_over_4_kib_is_413_too_large(self):
        body = '{"resume": "' + "x" * 4200 + '"}'
        assert_error(self, ticket_response(server, token(), body=body), 413, "too_large")

    def test_a_malformed_ticket_body_is_400_bad_request(self):
        assert_error(self, ticket_response(server, token(), body="{not json"), 400, "bad_request")

    def test_a_probe_ticket_without_resume_is_400_bad_request(self):
        assert_error(self, ticket_response(server, token(), body={"probe": True}), 400, "bad_request")


class OpenChecks(unittest.TestCase):
    def test_a_websocket_open_without_ticket_is_401_not_101(self):
        with self.assertRaises(UpgradeRefused) as refused:
            WebSocket.connect(server.port, "/v1/ws")
        assert_error(self, refused.exception.response, 401, "unauthorized")

    def test_a_ticket_is_single_use(self):
        t = ticket(server)
        WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t)).close()
        with self.assertRaises(UpgradeRefused) as refused:
            WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t))
        assert_error(self, refused.exception.response, 401, "unauthorized")

    def test_a_foreign_origin_is_403_before_the_upgrade_and_leaves_the_ticket_usable(self):
        t = ticket(server)
        with self.assertRaises(UpgradeRefused) as refused:
            WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t), origin="https://evil.example.com")
        assert_error(self, refused.exception.response, 403, "origin_not_allowed")
        ws = WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t), origin=ALLOWED_ORIGIN)
        ws.send({"t": "hello", "v": 1})
        self.assertEqual(ws.recv()["t"], "welcome")
        ws.close()

    def test_a_foreign_origin_on_sse_and_poll_is_403(self):
        for path in ("/v1/sse", "/v1/poll"):
            with self.subTest(path=path):
                t = ticket(server)
                response = request(server.port, "GET", f"{path}?" + query(ticket=t, v=1),
                                   headers={"Origin": "https://evil.example.com"})
                assert_error(self, response, 403, "origin_not_allowed")

    def test_a_plain_get_on_the_websocket_path_is_400_and_keeps_the_ticket(self):
        t = ticket(server)
        response = request(server.port, "GET", "/v1/ws?" + query(ticket=t))
        assert_error(self, response, 400, "bad_request")
        WebSocket.connect(server.port, "/v1/ws?" + query(ticket=t)).close()

    def test_a_resume_token_in_the_url_is_400_bad_request(self):
        ws, welcome = ws_open(server)
        ws.close()
        for path in ("/v1/sse", "/v1/poll"):
            with self.subTest(path=path):
                url = f"{path}?" + query(ticket=ticket(server), v=1, resume=welcome["resume_token"])
                assert_error(self, request(server.port, "GET", url), 400, "bad_request")
        old_poll = "/v1/poll?" + query(session=welcome["resume_token"], cursor=0)
        assert_error(self, request(server.port, "GET", old_poll), 400, "bad_request")

    def test_a_forged_ticket_is_401_on_every_transport(self):
        for path in ("/v1/sse", "/v1/poll"):
            with self.subTest(path=path):
                response = request(server.port, "GET", f"{path}?" + query(ticket="forged", v=1))
                assert_error(self, response, 401, "unauthorized")

    def test_a_probe_ticket_cannot_open_long_polling(self):
        ws, welcome = ws_open(server)
        probe = ticket(server, body={"resume": welcome["resume_token"], "probe": True})
        response = request(server.port, "GET", "/v1/poll?" + query(ticket=probe, v=1))
        assert_error(self, response, 400, "bad_request")
        ws.close()


class Origins(unittest.TestCase):
    FOREIGN = {"Origin": "https://evil.example.com"}

    def test_a_ticket_request_from_a_foreign_origin_is_403(self):
        assert_error(self, ticket_response(server, token(), headers=self.FOREIGN), 403, "origin_not_allowed")

    def test_send_and_poll_from_a_foreign_origin_are_403(self):
        for path, body in (("/v1/send", '{"session": "x", "frames": []}'), ("/v1/poll", '{"session": "x", "cursor": 0}')):
            with self.subTest(path=path):
                response = request(server.port, "POST", path, body=body,
                                   headers={"Content-Type": "text/plain", **self.FOREIGN})
                assert_error(self, response, 403, "origin_not_allowed")

    def test_requests_without_origin_are_not_refused_for_it(self):
        self.assertEqual(ticket_response(server, token()).status, 200)

    def test_the_server_api_does_not_check_origin(self):
        response = request(server.port, "POST", "/v1/publish", body={"room": unique("room"), "payload": 1},
                           headers={**bearer(API_KEY), **self.FOREIGN})
        self.assertEqual(response.status, 200, response)


class OpenCheckOrder(unittest.TestCase):
    """Origin (403), then the request itself (400), then the ticket (401)."""

    FOREIGN = {"Origin": "https://evil.example.com"}

    def test_a_foreign_origin_is_reported_before_a_bad_ticket(self):
        for path in ("/v1/sse", "/v1/poll"):
            with self.subTest(path=path):
                response = request(server.port, "GET", f"{path}?" + query(ticket="forged", v=1), headers=self.FOREIGN)
                assert_error(self, response, 403, "origin_not_allowed")
        with self.assertRaises(UpgradeRefused) as refused:
            WebSocket.connect(server.port, "/v1/ws?ticket=forged", origin=self.FOREIGN["Origin"])
        assert_error(self, refused.exception.response, 403, "origin_not_allowed")

    def test_a_bad_request_is_reported_before_a_bad_ticket(self):
        assert_error(self, request(server.port, "GET", "/v1/ws?ticket=forged"), 400, "bad_request")
        url = "/v1/sse?" + query(ticket="forged", v=1, resume="some-token")
        assert_error(self, request(server.port, "GET", url), 400, "bad_request")

    def test_another_version_is_answered_in_band_and_leaves_the_ticket_usable(self):
        t = ticket(server)
        response = request(server.port, "GET", "/v1/poll?" + query(ticket=t, v=2))
        self.assertEqual([f["code"] for f in response.json()["frames"]], [4002])
        self.assertEqual(request(server.port, "GET", "/v1/poll?" + query(ticket=t, v=1)).status, 200)


class Operations(unittest.TestCase):
    def test_healthz_is_200_while_serving(self):
        self.assertEqual(request(server.port, "GET", "/healthz").status, 200)

    def test_metrics_is_prometheus_text(self):
        response = request(server.port, "GET", "/metrics")
        self.assertEqual(response.status, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/plain"), response.headers)
        self.assertRegex(response.body.decode(), r"(?m)^# (HELP|TYPE) ")

    def test_paths_the_server_does_not_serve_are_404_or_405(self):
        self.assertEqual(request(server.port, "GET", "/v1/no-such-endpoint").status, 404)
        self.assertEqual(request(server.port, "GET", "/v1/ticket").status, 405)

    def test_demo_endpoints_are_absent_without_demo_auth(self):
        self.assertEqual(request(server.port, "POST", "/v1/demo-token", body={"name": "Ana"}).status, 404)
        self.assertEqual(request(server.port, "POST", "/v1/demo/drain").status, 404)

    def test_test_exit_is_absent_without_test_control(self):
        self.assertEqual(request(server.port, "POST", "/v1/test/exit").status, 404)
        self.assertEqual(request(server.port, "GET", "/healthz").status, 200)


class Cors(unittest.TestCase):
    """A browser app on an allowed origin must be able to call the HTTP endpoints."""

    def preflight(self, path, method, headers):
        return request(server.port, "OPTIONS", path, headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        })

    def test_the_ticket_preflight_allows_post_with_authorization(self):
        response = self.preflight("/v1/ticket", "POST", "authorization,content-type")
        self.assertIn(response.status, (200, 204), response)
        self.assertEqual(response.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN)
        self.assertIn("POST", response.headers.get("access-control-allow-methods", "").upper())
        allowed = response.headers.get("access-control-allow-headers", "").lower()
        self.assertIn("authorization", allowed)
        self.assertIn("content-type", allowed)
        self.assertEqual(response.headers.get("access-control-max-age"), "600")

    def test_simple_requests_from_the_allowed_origin_are_readable(self):
        response = ticket_response(server, token(), headers={"Origin": ALLOWED_ORIGIN})
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers.get("access-control-allow-origin"), ALLOWED_ORIGIN)
        exposed = response.headers.get("access-control-expose-headers", "").lower()
        self.assertIn("retry-after", exposed, "a page must be able to read Retry-After")

    def test_a_foreign_origin_gets_no_cors_grant(self):
        response = request(server.port, "OPTIONS", "/v1/ticket", headers={
            "Origin": "https://evil.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        })
        self.assertEqual(response.status, 200)
        self.assertNotEqual(response.headers.get("access-control-allow-origin"), "https://evil.example.com")
        self.assertNotEqual(response.headers.get("access-control-allow-origin"), "*")


if __name__ == "__main__":
    unittest.main()
