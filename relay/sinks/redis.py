"""The Redis Streams sink: append each event to a stream with XADD, a window per round trip.

Each event becomes one stream entry with two fields: ``id``, the event id (the dedupe key
receivers dedupe on), and ``event``, the event's JSON exactly as the HTTP sink POSTs one event.
The entry ID is Redis's own (``*``: milliseconds-sequence, increasing), so the stream's order
is the order of the XADDs. With ``maxlen``, every XADD trims with ``MAXLEN ~ maxlen``
(approximate: Redis drops whole nodes, cheaply, and keeps at least ``maxlen`` entries).

``send`` queues one XADD per event in one pipeline wrapped in MULTI/EXEC and reads the
replies in order: one round trip per window. A successful XADD is the ack. MULTI/EXEC
because a window of ~100 events reaches Redis in several reads, and without it another
client's command, or the end of an OOM, BUSY or LOADING state, can fall between two of its
XADDs: some refused, later ones taken, and the retry would add those again after the refused
ones, out of order. Refusals of that kind come when the XADD is queued, so EXEC aborts the
whole window (EXECABORT): all or nothing. It cost 5-15% of the plain pipeline's rate in
tests/bench/redis_bench.py. What the replies say:

- every XADD answered with an entry ID: ``send`` returns, the forwarder acks the batch;
- a refusal at queue time (OOM, BUSY, LOADING, READONLY ...): nothing was added,
  ``delivered`` is 0;
- a refusal at run time (WRONGTYPE, an entry ID past the end of the stream): Redis does not
  roll back, so ``delivered`` is the number of XADDs before the first refusal;
- either way the refusal is transient or permanent by its error code (``_TRANSIENT``);
- the connection lost, refused or timed out: ``TransientError``. redis-py does not hand
  back the replies read before the failure, so ``delivered`` is 0 and a window that was
  half taken is sent again: duplicates (same ``id``), never a loss.

redis-py's own retries are off: it would retry a whole pipeline after a connection error,
adding duplicates, and sleep in the forwarder's thread; the forwarder owns retries, with
backoff, jitter and ``max_age``. A connection that broke is dropped, so a reply that comes
late can never be read as the answer to the next window.

The forwarder's thread is the only one that calls ``send`` and, after it ended, ``close``.
No background thread, no timer: an idle sink makes no system calls.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from relay.config import RedisSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.metrics import NO_METRICS, Metrics

log = logging.getLogger(__name__)

# Error codes after which the same XADD may well succeed later, without anyone changing
# relay's config: the server is in a passing state. Every other refusal (WRONGTYPE: the key
# holds something else; NOPERM: an ACL forbids the command or the key; ERR ...) stays until
# a person acts, so it is permanent: dead-lettered after max_retries, with the reason.
# Auth failures (WRONGPASS, NOAUTH) never get here: redis-py raises them while connecting,
# as ConnectionError, and they are transient like any connection that cannot be made. A
# password changed on the server does not end the connections already made; the next one
# fails, and the events wait in the spool until relay has the new password (password_file,
# then a reload), rather than every one of them being dead-lettered in turn. LOADING does
# not get here either: redis-py raises BusyLoadingError, also a ConnectionError.
_TRANSIENT = {
    "OOM": "over maxmemory: workers acking and trimming free memory",
    "BUSY": "a script or function is running; it ends, or is killed",
    "LOADING": "loading its data set after a restart",
    "TRYAGAIN": "a cluster slot is being migrated",
    "CLUSTERDOWN": "the cluster is down",
    "MASTERDOWN": "a replica whose link to the master is down",
    "READONLY": "a replica: the master failed over; a new connection may reach the new one",
    "MISCONF": "it refuses writes until a failed RDB save succeeds",
    "NOREPLICAS": "fewer replicas than min-replicas-to-write are in sync",
}
# For redis-py without status_code: its classes for the codes above, subclasses first.
_CLASS_CODES: tuple[tuple[type[redis.RedisError], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
)
_HEALTH_CHECK_S = 30


class RedisSink:
    """XADDs events to ``cfg.stream``. See the module docstring for the contract."""

    def __init__(self, cfg: RedisSinkConfig, *, metrics: Metrics = NO_METRICS) -> None:
        self.name = cfg.name
        self._metrics = metrics
        url = cfg.url.get_secret_value()
        parts = urlsplit(url)
        self._where = f"{parts.hostname}:{parts.port or 6379}"  # never the password
        self._stream = cfg.stream
        self._maxlen = cfg.maxlen
        self._timeout = cfg.timeout_s
        self._up = False  # the last window went through (for one log line per change)
        tls: dict[str, Any] = {"ssl_ca_certs": str(cfg.ca_file)} if cfg.ca_file else {}
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=cfg.timeout_s,
            socket_connect_timeout=cfg.timeout_s,
            # Before using a connection idle this long, redis-py PINGs it: a link that went
            # half-open while the agent was idle (no FIN came, so the pool's own readability
            # check passes) then fails on a PING, which carries no events, rather than on a
            # window. Checked lazily, before the next command: no timer wakes an idle agent.
            health_check_interval=_HEALTH_CHECK_S,
            # No retries inside redis-py (since 6.0 it retries 3 times by default): the
            # forwarder owns retries, and a retried pipeline would XADD its window twice.
            retry=Retry(NoBackoff(), 0),
            **tls,
        )

    def send(self, events: Sequence[Event]) -> None:
        """XADD ``events`` in order; return once Redis has taken every one."""
        pipe = self._client.pipeline(transaction=True)
        for event in events:
            fields: dict[FieldT, EncodableT] = {"id": event.id, "event": event.to_json()}
            pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
        try:
            # raise_on_error=False: a refused XADD comes back in its place in the list, and
            # the replies after it are still read, so the connection stays in step.
            replies = pipe.execute(raise_on_error=False)
        except redis.ResponseError as exc:
            # EXECABORT: an XADD was refused as it was queued; redis-py raises that refusal
            # (OOM, BUSY, ...) and none of the window was added.
            self._refused(events, [exc], 0)
        except redis.TimeoutError as exc:
            self._drop()
            raise TransientError(
                f"no answer from Redis at {self._where} within {self._timeout:g}s"
            ) from exc
        except redis.AuthenticationError as exc:  # before redis.ConnectionError: a subclass
            self._drop()
            why = _describe(exc)
            raise TransientError(f"Redis at {self._where} refused our credentials: {why}") from exc
        except redis.RedisError as exc:  # ConnectionError, LOADING, a reply that is not RESP
            self._drop()
            raise TransientError(f"cannot reach Redis at {self._where}: {_describe(exc)}") from exc
        refused = next((i for i, r in enumerate(replies) if isinstance(r, Exception)), None)
        if refused is None:
            self._connected()
            return
        self._refused(events, replies, refused)

    def close(self) -> None:
        self._client.close()

    # ---------------------------------------------------------------- helpers

    def _refused(self, events: Sequence[Event], replies: list[Any], index: int) -> NoReturn:
        """Raise for the XADD at ``index``, the first one Redis refused."""
        error: redis.ResponseError = replies[index]
        code, text = _code(error), _describe(error)
        message = f"Redis at {self._where} refused XADD to {self._stream!r}: {text}"
        # Redis ran the XADDs after the refused one too, and some may have been taken (OOM
        # when memory was freed meanwhile): they will be added again after the refused one.
        late = sum(1 for r in replies[index + 1 :] if not isinstance(r, Exception))
        if late:
            log.warning(
                "sink %s: %d events after a refused one were added anyway; they will be "
                "added again (duplicates, by id)",
                self.name,
                late,
                extra={"SINK": self.name, "EVENT_ID": events[index].id},
            )
        if code in _TRANSIENT:
            if code == "READONLY":
                self._drop()  # after a failover, the url's host name may lead elsewhere
            raise TransientError(f"{message} ({_TRANSIENT[code]})", delivered=index)
        raise PermanentError(message, delivered=index, exact=True)

    def _connected(self) -> None:
        if not self._up:
            log.info(
                "sink %s: connected to Redis at %s, stream %r",
                self.name,
                self._where,
                self._stream,
                extra={"SINK": self.name},
            )
            self._up = True
            self._metrics.connected(self.name)

    def _drop(self) -> None:
        """Close the connection: a reply still on its way must not answer the next window."""
        self._up = False
        self._client.connection_pool.disconnect()


# redis-py prefixes an error raised from a MULTI/EXEC pipeline with the command it answers,
# arguments and all (the event's JSON): "Command # 1 (XADD s * id ...) of pipeline caused
# error: <what Redis said>". Only what Redis said is kept.
_ANNOTATION = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


def _code(error: redis.RedisError) -> str:
    """The error's code ("WRONGTYPE", "OOM", ...), or "" if it has none."""
    # redis-py takes the codes it maps to a class (OOM, READONLY, ...) off the message and,
    # since 6.x, keeps them in status_code; the codes it does not know stay in the message.
    code = getattr(error, "status_code", None)
    if isinstance(code, str) and code:
        return code
    for cls, name in _CLASS_CODES:
        if isinstance(error, cls):
            return name
    first = _said(error).split(" ", 1)[0]
    return first if first.isalpha() and first.isupper() else ""


def _said(error: redis.RedisError) -> str:
    return _ANNOTATION.sub("", str(error))


def _describe(error: redis.RedisError) -> str:
    """The error as Redis said it: its code, then its text."""
    text, code = _said(error) or type(error).__name__, _code(error)
    return text if not code or text.startswith(code) else f"{code} {text}"
