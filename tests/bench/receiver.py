"""A minimal HTTP receiver for benchmarks, run in its own process so that it does not share
the GIL with what is measured. POST /events takes an event or an array of events and
answers 204; GET /arrivals returns {event id: CLOCK_MONOTONIC arrival time}; POST /reset.
GET /latencies returns [[sent, arrived], ...] for the events whose payload carries
``"sent"`` (the publisher's CLOCK_MONOTONIC time, which every process on the box shares);
GET /count returns how many of those have arrived.

    python tests/bench/receiver.py PORT
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

arrivals: dict[str, float] = {}
sent: dict[str, float] = {}


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service would offer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/reset":
            arrivals.clear()
            sent.clear()
        else:
            now = time.monotonic()
            data = json.loads(body)
            for event in data if isinstance(data, list) else [data]:
                arrivals.setdefault(event["id"], now)
                payload = event.get("payload")
                if isinstance(payload, dict) and "sent" in payload:
                    sent.setdefault(event["id"], payload["sent"])
        self._reply(204, b"")

    def do_GET(self) -> None:
        if self.path == "/latencies":
            self._reply(200, json.dumps([[t, arrivals[i]] for i, t in list(sent.items())]).encode())
        elif self.path == "/count":
            self._reply(200, str(len(sent)).encode())
        else:
            self._reply(200, json.dumps(arrivals).encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver)
    print("ready", flush=True)
    server.serve_forever()
