"""The HTTP sink: POST each event (or, with a backlog, a JSON array of them) with httpx.

Success is any 2xx. Connection errors, timeouts, 408, 425, 429 and 5xx are transient (the
forwarder retries them forever, honouring ``Retry-After``); every other status, redirects
included, is permanent: retrying the same bytes will not change the answer.

With ``max_in_flight`` above 1 the forwarder sends from several threads at once
(``send_at``); each send takes a lane of its own: a client of one keep-alive connection with
its own deadline watchdog, made when first needed, so that a lane never waits for another's
answer. Those requests say where they stand in the sink's sequence: ``Relay-Sequence`` (the
events' positions, increasing, in body order) and ``Relay-Previous`` (the position of the
event before the first).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from relay import http_client
from relay.backoff import parse_retry_after
from relay.config import HttpSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.http_client import Deadline, describe, timed_out
from relay.sinks import Position
from relay.tls import client_context

TRANSIENT_STATUS = frozenset({408, 425, 429})
EXCERPT = 300  # characters of a refusal's body kept in the dead letter's reason


class _Lane:
    """One request at a time: a client of one keep-alive connection, and its deadline."""

    def __init__(self, name: str, make: Callable[[], httpx.Client]) -> None:
        self.deadline = Deadline(name)
        self.client = make()

    def close(self) -> None:
        self.client.close()
        self.deadline.close()


class HttpSink:
    """POSTs events to ``cfg.url``: one request at a time per lane, up to
    ``cfg.max_in_flight`` lanes."""

    def __init__(self, cfg: HttpSinkConfig, *, transport: httpx.BaseTransport | None = None):
        self.name = cfg.name
        self.batch_max = cfg.batch_max
        self._url = cfg.url
        self._where = urlsplit(cfg.url).netloc
        self._timeout = cfg.timeout_s
        self._headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.token is not None:
            self._headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
        verify = client_context(cfg.ca_file, cfg.cert_file, cfg.key_file)
        self._make_client = lambda: http_client.client(
            timeout=cfg.timeout_s, verify=verify, transport=transport
        )
        self._lanes = [_Lane(cfg.name, self._make_client)]  # free ones; the last used first
        self._made = 1
        self._max_lanes = cfg.max_in_flight
        self._free = threading.Condition()

    def send(self, events: Sequence[Event]) -> None:
        self.send_at(events, None)

    def send_at(self, events: Sequence[Event], position: Position | None) -> None:
        """As ``send``, from any thread; a request with a ``position`` says it."""
        if len(events) == 1:
            body, key = events[0].to_json(), events[0].id
        else:
            body = b"[" + b",".join(e.to_json() for e in events) + b"]"
            # The same batch always gets the same key; receivers of batches dedupe by the
            # id inside each event.
            key = hashlib.sha256(",".join(e.id for e in events).encode()).hexdigest()[:32]
        headers = {**self._headers, "Idempotency-Key": key}
        if position is not None:
            headers["Relay-Sequence"] = ", ".join(map(str, position.seqs))
            headers["Relay-Previous"] = str(position.previous)
        with self._lane() as lane:
            status, retry_after, excerpt = self._request(lane, body, headers)
        if 200 <= status < 300:
            return
        message = f"HTTP {status} from {self._where}" + (f": {excerpt}" if excerpt else "")
        if status in TRANSIENT_STATUS or status >= 500:
            raise TransientError(message, retry_after=parse_retry_after(retry_after, time.time()))
        raise PermanentError(message)

    @contextmanager
    def _lane(self) -> Iterator[_Lane]:
        """A free lane, made if none is and fewer than ``max_in_flight`` exist; the forwarder
        never has more sends under way than that, so nobody waits here for long."""
        with self._free:
            if not self._lanes and self._made < self._max_lanes:
                self._lanes.append(_Lane(self.name, self._make_client))
                self._made += 1
            self._free.wait_for(lambda: bool(self._lanes))
            lane = self._lanes.pop()
        try:
            yield lane
        finally:
            with self._free:
                self._lanes.append(lane)
                self._free.notify()

    def _request(
        self, lane: _Lane, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, str]:
        try:
            with lane.deadline.guard(self._timeout):
                return self._post(lane, body, headers)
        except httpx.HTTPError as exc:
            # httpx's own timeout (per read or write, as long as the deadline) can beat the
            # watchdog by a hair when the first read already hangs: the same news.
            if lane.deadline.expired or timed_out(exc):
                raise TransientError(
                    f"no complete answer from {self._where} within {self._timeout:g}s"
                ) from exc
            raise TransientError(f"cannot reach {self._where}: {describe(exc)}") from exc

    def _post(
        self, lane: _Lane, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, str]:
        with lane.client.stream(
            "POST",
            self._url,
            content=body,
            headers=headers,
            extensions={"trace": lane.deadline.trace},
        ) as response:
            # Read the (usually empty) body so that the connection can be reused; keep only
            # an excerpt, and stop reading a large one (that connection is then dropped).
            excerpt = b""
            for chunk in response.iter_bytes():
                excerpt += chunk
                if len(excerpt) >= EXCERPT:
                    break
            text = "" if response.is_success else excerpt.decode("utf-8", "replace")
            return response.status_code, response.headers.get("Retry-After"), text[:EXCERPT].strip()

    def close(self) -> None:
        with self._free:
            lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.close()
