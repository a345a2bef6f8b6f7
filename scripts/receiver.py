#!/usr/bin/env python3
"""A stand-in for the remote service of etc/laptop.toml: prints each event that relay's HTTP
sink POSTs to it, and answers 200. The standard library only.

    python3 scripts/receiver.py [--port 8080] [--fail-rate 0.3]

``--fail-rate``: the share of requests answered 503, to watch relay retry (relay status).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--fail-rate", type=float, default=0.0, metavar="P")
    args = p.parse_args()

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if random.random() < args.fail_rate:
                print("(refused a request with 503: relay retries it)", flush=True)
                self._reply(503)
                return
            events = json.loads(body)  # one event, or a list of them with batch_max > 1
            for event in events if isinstance(events, list) else [events]:
                payload = json.dumps(event.get("payload"))
                print(f"{event['time']}  {event['name']}  {payload}  id {event['id']}", flush=True)
            self._reply(200)

        def _reply(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    # Ctrl-C and kill (SIGTERM) both end it. SIGINT's handler is set here as well: a job that
    # a script starts in the background inherits SIGINT ignored, and Python then leaves it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Receiver)
    print(f"receiving relay's events on http://127.0.0.1:{args.port}/ (Ctrl-C stops)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # the end, not an error
        server.serve_forever()


if __name__ == "__main__":
    main()
