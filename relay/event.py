"""The event of DESIGN.md: what relay stores and forwards. Pure: no I/O, no clocks but the id's.

On the wire (HTTP body, AMQP body) an event is exactly::

    {"id": "...", "node": "hall-pi", "source": "mqtt", "name": "home/hall/door",
     "time": "2026-11-27T10:00:00.123456Z", "payload": {"state": "open"}}
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_FIELDS = ("id", "node", "source", "name", "time", "payload")


@dataclass(frozen=True)
class Event:
    """One device event. ``raw`` is the exact JSON the spool holds, so a retry sends the
    same bytes as the first attempt."""

    id: str
    node: str
    source: str
    name: str
    time: str
    payload: Any
    raw: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def new(cls, *, node: str, source: str, name: str, payload: Any = None) -> Event:
        """A new event stamped now, with a fresh id. ``payload`` must be JSON-serialisable
        (``TypeError`` or ``ValueError`` otherwise)."""
        fields = (new_id(), node, source, name, utc_now(), payload)
        return cls(*fields, raw=_encode(dict(zip(_FIELDS, fields, strict=True))))

    def to_json(self) -> bytes:
        return self.raw or _encode({k: getattr(self, k) for k in _FIELDS})

    @classmethod
    def from_json(cls, body: bytes) -> Event:
        """Parse an event; raises ``ValueError`` if ``body`` is not one."""
        data = json.loads(body)
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise ValueError("not a relay event: expected the keys " + ", ".join(_FIELDS))
        return cls(**{k: data[k] for k in _FIELDS}, raw=bytes(body))


def _encode(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode_payload(raw: bytes) -> Any:
    """DESIGN.md's payload rule: JSON when it parses, else UTF-8 text, else base64."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}
    try:
        # NaN and Infinity parse in Python but are not JSON; keep such payloads as text.
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return text


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Event ids are UUIDv7 (RFC 9562) as 32 hex digits: 48 bits of Unix milliseconds, then a
# 42-bit counter seeded at random each millisecond (RFC 9562 section 6.2, method 1), then
# 32 random bits. This is what Python 3.14's uuid.uuid7() does; 3.11 lacks it, and the
# uuid6 backport bumps the timestamp by 1 ms per id within a millisecond (at 100k ids/s the
# ids run 100 ms ahead of the clock per millisecond) and is not thread-safe.
_id_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = (1 << 42) - 1


def new_id() -> str:
    """A unique id that sorts by creation time (strictly increasing within this process)."""
    global _last_ms, _counter
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            counter = secrets.randbits(41)  # top bit clear leaves room to count up
        else:
            ms = _last_ms  # the clock stood still or went back: keep counting in the last ms
            counter = _counter + 1
            if counter > _COUNTER_MAX:
                ms, counter = ms + 1, secrets.randbits(41)
        _last_ms, _counter = ms, counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | secrets.randbits(32)
    )
    return f"{value:032x}"
