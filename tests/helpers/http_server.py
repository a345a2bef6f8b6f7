"""A real HTTP server on loopback for sink tests: records every request, answers as told."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    at: float  # monotonic
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what we answered
    done_at: float = 0.0  # monotonic, when the answer was written (or given up)

    @property
    def events(self) -> list[dict[str, Any]]:
        data = json.loads(self.body)
        return data if isinstance(data, list) else [data]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # before the status line
    trickle: float = 0.0  # seconds between single bytes of the whole response
    hang: bool = False  # never answer (until the server stops)


Responder = Callable[[Received, int], Reply]  # (request, how many came before) -> reply


class RemoteServer:
    """``url`` accepts POSTs; ``received`` holds every request in arrival order."""

    def __init__(self, respond: Responder | None = None, port: int = 0) -> None:
        self.respond: Responder = respond or (lambda r, n: Reply())
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                req = Received(time.monotonic(), dict(self.headers), self.rfile.read(length))
                with server._lock:
                    count = len(server.received)
                    server.received.append(req)
                reply = server.respond(req, count)
                if server._answer(self, reply):
                    req.status = reply.status  # only an answer the client got counts
                req.done_at = time.monotonic()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/events"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _answer(self, handler: BaseHTTPRequestHandler, reply: Reply) -> bool:
        if reply.hang:
            self._stopping.wait()
            return False
        if reply.delay:
            self._stopping.wait(reply.delay)
        head = f"HTTP/1.1 {reply.status} X\r\nContent-Length: {len(reply.body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items()) + "\r\n"
        data = head.encode() + reply.body
        try:
            if reply.trickle:
                for i in range(len(data)):
                    if self._stopping.wait(reply.trickle):
                        return False
                    handler.wfile.write(data[i : i + 1])
                    handler.wfile.flush()
            else:
                handler.wfile.write(data)
                handler.wfile.flush()
        except OSError:
            return False  # the client gave up: that is what some tests want
        return True

    def accepted(self) -> list[dict[str, Any]]:
        """Every event of every 2xx-answered request, in arrival order."""
        with self._lock:
            return [e for r in self.received if 200 <= r.status < 300 for e in r.events]

    def start(self) -> RemoteServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> RemoteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
