"""An HTTP remote for benchmarks whose behaviour is set by flags: far away, flaky, or refusing
some events. It runs in its own process, so that it does not share the GIL with what is
measured, and serves many requests at once (a thread per connection, keep-alive HTTP/1.1).

    python tests/bench/remote.py [--port 0] [--delay-ms D] [--fail P [--seed S]
        [--retry-after-share S]] [--refuse-marked]

It prints ``ready PORT`` once it listens (``--port 0``: a free port). Endpoints:

POST /events   an event, or a JSON array of them. Every request waits ``--delay-ms``, then a
               share ``--fail`` of them, drawn at random (``--seed``), fail: of those, a
               share ``--retry-after-share`` is answered 429 with ``Retry-After: 1``, the
               rest 500. With ``--refuse-marked``, a request that did not fail and holds an
               event whose payload has ``"bad": true`` is answered 400 (a real service
               limits the rate before it reads the body). Otherwise 204, and its events
               are received. A request answered 4xx or 5xx receives none of its events.
GET /stats     {"requests": {status: count}, "received": distinct events,
               "arrivals": events received in all, "duplicates": arrivals - received,
               "order": [event ids in the order of their first arrival],
               "first_at", "last_at": CLOCK_MONOTONIC of the first and last first arrival}
POST /reset    forget everything, and draw the same failures again from ``--seed``
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Remote:
    """What the remote decides and records; one, shared by the handler threads."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self.args.seed)
            self._statuses: Counter[int] = Counter()
            self._counts: dict[str, int] = {}
            self._first: dict[str, float] = {}
            self._order: list[str] = []

    def answer(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for a POST /events of ``body``."""
        with self._lock:
            # Both numbers drawn for every request, so that a seed gives the same sequence
            # of answers whatever the mix of refusals.
            failing = self._rng.random() < self.args.fail
            throttled = self._rng.random() < self.args.retry_after_share
        events: list[dict[str, Any]] = []
        try:
            data = json.loads(body)
            events = data if isinstance(data, list) else [data]
            status, headers, text = self._decide(events, failing, throttled)
        except (ValueError, LookupError, AttributeError, TypeError):
            status, headers, text = 400, {}, "not an event or an array of events"
        with self._lock:
            self._statuses[status] += 1
            if status < 300:
                self._receive(events)
        return status, headers, text.encode()

    def _decide(
        self, events: list[dict[str, Any]], failing: bool, throttled: bool
    ) -> tuple[int, dict[str, str], str]:
        if failing and throttled:
            return 429, {"Retry-After": "1"}, "too many requests"
        if failing:
            return 500, {}, "flaky remote"
        for event in events:
            key = event["id"]
            payload = event.get("payload")
            if self.args.refuse_marked and isinstance(payload, dict) and payload.get("bad") is True:
                return 400, {}, f"event {key} is marked bad"
        return 204, {}, ""

    def _receive(self, events: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for event in events:
            key = event["id"]
            if key not in self._counts:
                self._counts[key] = 0
                self._first[key] = now
                self._order.append(key)
            self._counts[key] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            arrivals = sum(self._counts.values())
            return {
                "requests": {str(s): n for s, n in sorted(self._statuses.items())},
                "received": len(self._order),
                "arrivals": arrivals,
                "duplicates": arrivals - len(self._order),
                "order": list(self._order),
                "first_at": self._first[self._order[0]] if self._order else None,
                "last_at": self._first[self._order[-1]] if self._order else None,
            }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service would offer
    # Headers and body go out in two writes; without this, Nagle holds the body back until
    # the client's delayed ACK of the headers (40 ms) on every answer that has one.
    disable_nagle_algorithm = True
    remote: Remote  # set before serving

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/reset":
            self.remote.reset()
            self._reply(204, {}, b"")
        elif self.path == "/events":
            time.sleep(self.remote.args.delay_ms / 1000)
            self._reply(*self.remote.answer(body))
        else:
            self._reply(404, {}, b"")

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._reply(200, {"Content-Type": "application/json"}, self._stats())
        else:
            self._reply(404, {}, b"")

    def _stats(self) -> bytes:
        return json.dumps(self.remote.stats()).encode()

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # many relays' (or threads') connections at once


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--delay-ms", type=float, default=0, help="answer each request after this")
    p.add_argument("--fail", type=float, default=0, help="share of requests that fail")
    p.add_argument("--retry-after-share", type=float, default=0, help="of those, share of 429")
    p.add_argument("--seed", type=int, default=1, help="of the failures drawn at random")
    p.add_argument("--refuse-marked", action="store_true", help='400 to a "bad": true event')
    args = p.parse_args()
    Handler.remote = Remote(args)
    server = Server(("127.0.0.1", args.port), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
