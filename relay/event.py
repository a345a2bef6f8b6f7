"""The event: what relay stores and forwards. Pure: no I/O, no clocks but the id's.

On the wire (HTTP body, AMQP body) an event is exactly::

    {"id": "...", "node": "hall-pi", "source": "mqtt", "name": "home/hall/door",
     "time": "2026-11-27T10:00:00.123456Z", "payload": {"state": "open"}}
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
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
    return _ENCODER.encode(fields).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


# Made once: json.dumps() and json.loads() with options build a new encoder or decoder on
# every call, which costs more than encoding a small event (5.3 against 3.7 us, and 4.1
# against 1.6 us to decode a payload, on the benchmark machine).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# NaN and Infinity parse in Python but are not JSON.
_PAYLOAD_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


MAX_DEPTH = 256  # JSON nested deeper than this is kept as text (see decode_payload)


def decode_payload(raw: bytes) -> Any:
    """The payload rule of the event on the wire: JSON when it parses, else UTF-8 text, else
    base64.

    JSON nested more than ``MAX_DEPTH`` levels deep is kept as text too: Python's json
    recurses, so an event around it might not encode, or decode again when leased.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}
    try:
        # A payload with NaN or Infinity is kept as text (see _PAYLOAD_DECODER).
        value = _PAYLOAD_DECODER.decode(text)
    except (ValueError, RecursionError):  # json raises RecursionError for "[[[[..." nesting
        return text
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value):
        return text
    return value


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests lists and dicts more than ``MAX_DEPTH`` deep (iteratively)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def utc_now() -> str:
    """Now, as "2026-11-27T10:00:00.123456Z"."""
    sec, us = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{_whole_second(sec)}.{us:06d}Z"


@functools.lru_cache(maxsize=2)
def _whole_second(sec: int) -> str:
    # Events are stamped thousands of times a second: format each second once.
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")


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
        rand = int.from_bytes(os.urandom(10))  # one system call for all the random bits
        if ms > _last_ms:
            counter = rand >> 39  # 41 bits: the top bit clear leaves room to count up
        else:
            ms = _last_ms  # the clock stood still or went back: keep counting in the last ms
            counter = _counter + 1
            if counter > _COUNTER_MAX:
                ms, counter = ms + 1, rand >> 39
        _last_ms, _counter = ms, counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | (rand & 0xFFFF_FFFF)
    )
    return f"{value:032x}"


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True)
class Command:
    """A device command: run ``action`` on ``device`` once, unless older than its TTL.

    ``received_at`` is the wall-clock time relay recorded it; ``id`` makes a repeat (a
    redelivery, a retried publish) recognisable, so that it never runs twice.
    """

    id: str
    device: str
    action: str
    args: dict[str, Any]
    source: str
    received_at: float

    @classmethod
    def parse(
        cls, payload: bytes | str, *, device: str, source: str, received_at: float
    ) -> Command:
        """From the wire: ``{"id": ..., "action": ..., "args": {...}}`` or a bare action.

        Raises ``ValueError`` naming what is wrong. A missing id gets a fresh one.
        """
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # deep "[[[[...": RecursionError, not ValueError
            data = text.strip()
        if isinstance(data, str):
            data = {"action": data}
        if not isinstance(data, dict):
            raise ValueError('a command is {"action": ..., "id": ..., "args": {...}} or an action')
        unknown = set(data) - {"id", "action", "args"}
        if unknown:
            raise ValueError(f"unknown command keys: {', '.join(sorted(unknown))}")
        return cls.of(
            id=str(data.get("id") or new_id()),
            device=device,
            action=data.get("action"),
            args=data.get("args") or {},
            source=source,
            received_at=received_at,
        )

    @classmethod
    def of(
        cls, *, id: str, device: str, action: Any, args: Any, source: str, received_at: float
    ) -> Command:
        """A validated command; ``ValueError`` for a bad id, device, action or args."""
        if not _ID.match(id):
            raise ValueError("command id must be 1-128 of A-Z a-z 0-9 _ . : -")
        if not _NAME.match(device):
            raise ValueError("device name must be 1-64 of A-Z a-z 0-9 _ . -")
        if not isinstance(action, str) or not _NAME.match(action):
            raise ValueError("action must be 1-64 of A-Z a-z 0-9 _ . -")
        if not isinstance(args, dict):
            raise ValueError("args must be a JSON object")
        return cls(id, device, action, args, source, received_at)
