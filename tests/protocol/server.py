"""Starts and stops real `rtlink-server` processes for the conformance suite.

Each server listens on a free 127.0.0.1 port, logs to a temporary file and is killed when the
test module ends (`unittest.addModuleCleanup`), also when a test or the start-up failed.
"""

import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import uuid

from wire import make_jwt

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SECRET = "conformance-secret-0123456789abcdef0123456789"  # HS256, at least 32 bytes
API_KEY = "conformance-api-key-0123456789"


def server_binary():
    explicit = os.environ.get("RTLINK_SERVER_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    path = os.path.join(target, "debug", "rtlink-server")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "-p", "rtlink-server"], cwd=REPO, check=True)
    return path


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One rtlink-server process. `flags` are the command-line flags after `--listen`."""

    # Every test opens transports from 127.0.0.1: the per-address accept budget (default burst
    # 100) would otherwise throttle the suite itself, which is not what it checks (a server given
    # its own --accept-rate-per-ip keeps it).
    BASE_FLAGS = ["--accept-rate-per-ip", "10000", "--accept-burst-per-ip", "10000"]

    def __init__(self, flags):
        self.flags = list(flags)
        self.port = None
        self.proc = None
        self.expect_exit = False  # set by a test that makes the server exit on purpose
        self.log = tempfile.NamedTemporaryFile(prefix="rtlink-conformance-", suffix=".log", delete=False)

    def start(self, timeout=20.0):
        for _attempt in range(3):
            self.port = _free_port()
            base = [] if "--accept-rate-per-ip" in self.flags else self.BASE_FLAGS
            args = [server_binary(), "--listen", f"127.0.0.1:{self.port}", *base, *self.flags]
            env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
            self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
            if self._wait_healthy(timeout):
                return self
            self.proc.kill()
            self.proc.wait(timeout=10)
        raise RuntimeError(f"rtlink-server did not start; log:\n{self.log_tail()}")

    def _wait_healthy(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return True
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)  # a process that is starting: there is nothing to await instead
        return False

    def stop(self):
        """Kills the process and removes its log; prints the log if the server had crashed."""
        if self.proc is None:
            return
        crashed = self.proc.poll() is not None and not self.expect_exit
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if crashed:
            print(f"\nrtlink-server exited with {self.proc.returncode}; its log:\n{self.log_tail()}")
        self.proc = None
        self.log.close()
        os.unlink(self.log.name)

    def log_tail(self, n=4000):
        with open(self.log.name, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")


class Redis:
    """A throwaway redis-server (no persistence) on a free 127.0.0.1 port."""

    def __init__(self):
        self.port = None
        self.proc = None

    def start(self, timeout=10.0):
        if shutil.which("redis-server") is None:
            raise unittest.SkipTest("redis-server is not installed (scripts/setup installs it)")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)  # a process that is starting: there is nothing to await instead
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def start_for_test(test, *flags):
    """A server for one test, stopped when the test ends whatever happens."""
    server = Server(flags)
    test.addCleanup(server.stop)
    return server.start()


def start_for_module(*flags):
    """A server for one test module, stopped when the module ends whatever happens."""
    server = Server(flags)
    unittest.addModuleCleanup(server.stop)
    return server.start()


def unique(prefix):
    """A fresh name, so tests never share rooms or users."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def token(sub=None, name=None, rooms=("*",), exp_in=3600, secret=SECRET, **extra):
    claims = {"sub": sub or unique("user"), "exp": int(time.time()) + exp_in, **extra}
    if name is not None:
        claims["name"] = name
    if rooms is not None:
        claims["rooms"] = list(rooms)
    return make_jwt(secret, claims)
