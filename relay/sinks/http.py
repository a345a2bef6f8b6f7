"""The HTTP sink: POST each event (or, with a backlog, a JSON array of them) with httpx.

Success is any 2xx. Connection errors, timeouts, 408, 425, 429 and 5xx are transient (the
forwarder retries them forever, honouring ``Retry-After``); every other status, redirects
included, is permanent: retrying the same bytes will not change the answer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from relay import http_client
from relay.backoff import parse_retry_after
from relay.config import HttpSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.http_client import Deadline, describe, timed_out
from relay.tls import client_context

TRANSIENT_STATUS = frozenset({408, 425, 429})
EXCERPT = 300  # characters of a refusal's body kept in the dead letter's reason


class HttpSink:
    """POSTs events to ``cfg.url``; one keep-alive connection, used by one thread."""

    def __init__(self, cfg: HttpSinkConfig, *, transport: httpx.BaseTransport | None = None):
        self.name = cfg.name
        self.batch_max = cfg.batch_max
        self._url = cfg.url
        self._where = urlsplit(cfg.url).netloc
        self._timeout = cfg.timeout_s
        self._headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.token is not None:
            self._headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
        self._deadline = Deadline(cfg.name)
        self._client = http_client.client(
            timeout=cfg.timeout_s,
            verify=client_context(cfg.ca_file, cfg.cert_file, cfg.key_file),
            transport=transport,
        )

    def send(self, events: Sequence[Event]) -> None:
        if len(events) == 1:
            body, key = events[0].to_json(), events[0].id
        else:
            body = b"[" + b",".join(e.to_json() for e in events) + b"]"
            # The same batch always gets the same key; receivers of batches dedupe by the
            # id inside each event.
            key = hashlib.sha256(",".join(e.id for e in events).encode()).hexdigest()[:32]
        headers = {**self._headers, "Idempotency-Key": key}
        try:
            with self._deadline.guard(self._timeout):
                status, retry_after, excerpt = self._post(body, headers)
        except httpx.HTTPError as exc:
            # httpx's own timeout (per read or write, as long as the deadline) can beat the
            # watchdog by a hair when the first read already hangs: the same news.
            if self._deadline.expired or timed_out(exc):
                raise TransientError(
                    f"no complete answer from {self._where} within {self._timeout:g}s"
                ) from exc
            raise TransientError(f"cannot reach {self._where}: {describe(exc)}") from exc
        if 200 <= status < 300:
            return
        message = f"HTTP {status} from {self._where}" + (f": {excerpt}" if excerpt else "")
        if status in TRANSIENT_STATUS or status >= 500:
            raise TransientError(message, retry_after=parse_retry_after(retry_after, time.time()))
        raise PermanentError(message)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, str]:
        with self._client.stream(
            "POST", self._url, content=body, headers=headers, extensions={"trace": self._trace}
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

    def _trace(self, event: str, info: dict[str, object]) -> None:
        self._deadline.trace(event, info)

    def close(self) -> None:
        self._client.close()
        self._deadline.close()
