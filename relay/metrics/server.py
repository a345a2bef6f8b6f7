"""The metrics endpoint: Prometheus' text format over plain HTTP on ``[metrics] listen``.

prometheus-client's ``start_http_server`` runs socketserver's ``serve_forever``, which wakes
every half second to look for a shutdown request, and an idle relay must not wake at all
(P7). So this component runs its own loop: it sleeps in ``select()`` on the listening socket
and a wake-up socket, and hands each connection to a thread of its own (a slow scraper holds
up nobody). The WSGI app is prometheus-client's.
"""

from __future__ import annotations

import logging
import selectors
import socket
import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from relay.errors import RelayError

log = logging.getLogger(__name__)


class _Handler(WSGIRequestHandler):
    timeout = 10  # seconds a scraper may take to send its request or read the answer

    def log_message(self, format: str, *args: Any) -> None:
        """Not one line per scrape in the journal."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape does not hold up relay's exit
    timeout = 0  # handle_request() never waits: our select() saw the connection already

    def __init__(self, address: tuple[str, int]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # http.server's server_bind() looks up the host's fully qualified name, which asks
        # DNS for "0.0.0.0" and can stall the start of a Pi without a network for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class MetricsServer:
    """Serves ``registry`` at ``http://<host>:<port>/metrics``; a component of the agent.

    It binds its port when built, not when started: a port already taken (or a host that
    does not resolve) fails the agent's build, before any component has started, with
    ``RelayError`` in one line.
    """

    name = "metrics"
    is_sink = False
    last_error: str | None = None

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        self.host, self.port = address
        try:
            self._httpd = _Server(address)
        except OSError as exc:  # socket.gaierror for an unknown host is one too
            raise RelayError(
                f"metrics: cannot listen on {self.where} ([metrics] listen): {exc.strerror or exc}"
            ) from None
        self._httpd.set_app(make_wsgi_app(registry))
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        log.info("metrics: serving http://%s/metrics", self.where)

    def stop(self) -> None:
        """Stop listening; a scrape under way finishes on its own thread. Idempotent."""
        if self._thread.is_alive():
            self._wake_w.send(b"!")
            self._thread.join()
        self._httpd.server_close()
        self._wake_r.close()
        self._wake_w.close()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        httpd = self._httpd
        with selectors.DefaultSelector() as selector:
            selector.register(httpd, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = selector.select()  # no timeout: only a scrape or stop() wakes us
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    return
                httpd.handle_request()  # accept, and answer on a thread of its own
