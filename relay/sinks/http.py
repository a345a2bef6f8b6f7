"""The HTTP sink: POST each event (or, with a backlog, a JSON array of them) with httpx.

Success is any 2xx. Connection errors, timeouts, 408, 425, 429 and 5xx are transient (the
forwarder retries them forever, honouring ``Retry-After``); every other status, redirects
included, is permanent: retrying the same bytes will not change the answer.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from relay import __version__
from relay.backoff import parse_retry_after
from relay.config import HttpSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.httpx_deadline import Deadline

log = logging.getLogger(__name__)

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
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"relay/{__version__}",
            **cfg.headers,
        }
        if cfg.token is not None:
            self._headers["Authorization"] = f"Bearer {cfg.token.get_secret_value()}"
        self._deadline = Deadline(cfg.name)
        _quiet_httpx()
        self._client = httpx.Client(
            transport=transport,
            verify=_tls_context(cfg),
            timeout=httpx.Timeout(cfg.timeout_s),
            # One connection, so the deadline watchdog knows which socket to cut.
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            follow_redirects=False,
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
            if self._deadline.expired or _timed_out(exc):
                raise TransientError(
                    f"no complete answer from {self._where} within {self._timeout:g}s"
                ) from exc
            raise TransientError(f"cannot reach {self._where}: {_describe(exc)}") from exc
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


def _tls_context(cfg: HttpSinkConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if cfg.cert_file:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    return ctx


def _timed_out(exc: httpx.HTTPError) -> bool:
    """A read, write or pool timeout: ``timeout_s`` passed with the request under way. (A
    connect timeout is not: nothing reached the server, it is "cannot reach".)"""
    return isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout)


def _describe(exc: httpx.HTTPError) -> str:
    """A short reason: the innermost cause's text (say, "Connection refused")."""
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    text = str(cause) or type(cause).__name__
    return text if isinstance(cause, httpx.HTTPError) else f"{type(exc).__name__}: {text}"


def _quiet_httpx() -> None:
    # httpx logs every request at INFO ("HTTP Request: POST <url> ..."): a journal line per
    # event delivered, with the URL (and a token in its query, if any). Unless relay itself
    # logs at DEBUG, leave those out; failures reach the log through the forwarder, once.
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        httpx_log.setLevel(logging.WARNING)
