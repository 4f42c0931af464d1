#!/usr/bin/env python3
"""A small backend for rtlink: pushes live metrics to the demo's dashboard page.

Once a second it reads this machine's load and memory (from /proc) and the rtlink server's own
counters (GET /metrics), and publishes them with the server API for backends in one batch
(POST /v1/publish {"messages": [...]}) to the rooms `metrics:host` and `metrics:server`. The
dashboard (www/dashboard.html) subscribes to both and draws them live; a tab opened later
starts from the last values (room history).

    make demo                                        # serves the demo with the API key below
    python3 examples/metrics-pusher.py --api-key rtlink-demo-api-key
    open http://127.0.0.1:8080/dashboard.html

Against another server: --url https://rt.example.com --api-key "$RTLINK_API_KEY" (or set
RTLINK_API_KEY). Python 3.8+, standard library only. Each message has an id (the host name and
the tick), so a batch resent after a timeout is stored once. Errors come back as HTTP status +
{"error", "message", "retry_after_ms"?}; the script prints them and keeps going (honouring
Retry-After), and stops on 401 (wrong key).
"""

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request


def read_host():
    """Load averages and memory use of this machine (Linux /proc); None where unavailable."""
    host = {"name": socket.gethostname()}
    try:
        with open("/proc/loadavg") as f:
            one, five, fifteen = (float(x) for x in f.read().split()[:3])
        host.update(load1=one, load5=five, load15=fifteen, cpus=os.cpu_count() or 1)
    except OSError:
        pass
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
        total, available = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
        host.update(mem_total=total, mem_used=total - available)
    except (OSError, KeyError, ValueError):
        pass
    return host


def read_server(url):
    """A few counters from the server's Prometheus text, or {} if it cannot be read."""
    wanted = {
        "rtlink_sessions": "sessions",
        "rtlink_messages_published_total": "published",
        "rtlink_frames_out_total": "frames_out",
    }
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    server = {"connections": 0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            number = float(value)
        except ValueError:
            continue
        if name in wanted:
            server[wanted[name]] = number
        elif name.startswith("rtlink_connections{"):
            server["connections"] += number
    return server


def publish(url, api_key, body):
    """POST /v1/publish; returns (status, JSON answer, Retry-After seconds or None)."""
    request = urllib.request.Request(
        url + "/v1/publish",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": "Bearer " + api_key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.load(resp), None
    except urllib.error.HTTPError as err:
        retry = err.headers.get("Retry-After")
        try:
            answer = json.load(err)
        except ValueError:
            answer = {"error": "http", "message": str(err)}
        return err.code, answer, float(retry) if retry else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("RTLINK_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--api-key", default=os.environ.get("RTLINK_API_KEY"))
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between pushes")
    parser.add_argument("--count", type=int, default=0, help="stop after this many pushes (0: never)")
    args = parser.parse_args()
    if not args.api_key:
        parser.error("give --api-key (or set RTLINK_API_KEY)")
    url = args.url.rstrip("/")
    host_name = socket.gethostname()
    tick, failures = 0, 0
    while args.count == 0 or tick < args.count:
        tick += 1
        now_ms = int(time.time() * 1000)
        batch = {"messages": [
            {"room": "metrics:host", "id": f"{host_name}:host:{now_ms}",
             "name": "metrics-pusher", "payload": {"ts": now_ms, **read_host()}},
            {"room": "metrics:server", "id": f"{host_name}:server:{now_ms}",
             "name": "metrics-pusher", "payload": {"ts": now_ms, **read_server(url)}},
        ]}
        try:
            status, answer, retry_after = publish(url, args.api_key, batch)
        except (OSError, urllib.error.URLError) as err:
            status, answer, retry_after = 0, {"error": "network", "message": str(err)}, None
        if status == 200:
            offsets = ", ".join(f'{r["room"]}@{r["offset"]}' for r in answer["results"])
            print(f"pushed {offsets}", flush=True)
        else:
            failures += 1
            print(f"push failed: {status} {answer.get('error')}: {answer.get('message')}",
                  file=sys.stderr, flush=True)
            if status == 401:
                return 1
            if args.count and failures >= args.count:
                return 1
        time.sleep(max(args.interval, retry_after or 0))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
