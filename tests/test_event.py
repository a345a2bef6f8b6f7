"""The event on the wire (DESIGN.md): id, JSON shape, payload rules."""

from __future__ import annotations

import base64
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.event import MAX_DEPTH, Event, decode_payload, new_id


def test_json_shape_is_the_public_one() -> None:
    e = Event.new(node="hall-pi", source="mqtt", name="home/hall/door", payload={"state": "open"})
    data = json.loads(e.to_json())
    assert list(data) == ["id", "node", "source", "name", "time", "payload"]
    assert data["payload"] == {"state": "open"}
    assert len(data["id"]) == 32 and int(data["id"], 16)
    assert data["id"][12] == "7"  # a UUIDv7
    assert data["time"].endswith("Z") and len(data["time"]) == len("2026-11-27T10:00:00.123456Z")


def test_round_trip_keeps_the_exact_bytes() -> None:
    e = Event.new(node="n", source="push", name="x", payload={"ü": [1, 2.5, None]})
    back = Event.from_json(e.to_json())
    assert back == e and back.to_json() == e.to_json()


@pytest.mark.parametrize("body", [b"[]", b'{"id": "x"}', b"not json"])
def test_from_json_rejects_what_is_not_an_event(body: bytes) -> None:
    with pytest.raises(ValueError):
        Event.from_json(body)


def test_ids_are_unique_and_sorted_across_threads() -> None:
    per_thread: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for out in per_thread for i in out]
    assert len(set(everything)) == len(everything)
    for out in per_thread:
        assert out == sorted(out)


def test_id_starts_with_the_time() -> None:
    import time

    before = time.time_ns() // 1_000_000
    ms = int(new_id()[:12], 16)
    assert before <= ms <= time.time_ns() // 1_000_000 + 1


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        (b'{"state": "open"}', {"state": "open"}),
        (b"42", 42),
        (b"on", "on"),
        (b"", ""),
        (b"NaN", "NaN"),  # not JSON, though Python's parser takes it
        ("café".encode(), "café"),
        (b"\xff\xfe\x00", {"base64": "//4A"}),
    ],
)
def test_payload_rules(raw: bytes, payload: object) -> None:
    assert decode_payload(raw) == payload


@given(st.binary(max_size=64))
def test_any_bytes_become_a_payload_that_serialises(raw: bytes) -> None:
    payload = decode_payload(raw)
    e = Event.new(node="n", source="mqtt", name="t", payload=payload)
    assert Event.from_json(e.to_json()).payload == payload
    if isinstance(payload, dict) and set(payload) == {"base64"}:
        assert base64.b64decode(payload["base64"]) == raw


def test_non_json_payload_is_refused_at_creation() -> None:
    with pytest.raises(ValueError):
        Event.new(node="n", source="push", name="x", payload=float("nan"))
    with pytest.raises(TypeError):
        Event.new(node="n", source="push", name="x", payload=object())


def test_deeply_nested_json_is_kept_as_text() -> None:
    """JSON that parses stays JSON up to MAX_DEPTH levels; deeper (or so deep that Python's
    json cannot parse it) it is kept as text, so the event around it always encodes."""
    fits = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert decode_payload(fits.encode()) == json.loads(fits)
    deeper = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    assert decode_payload(deeper.encode()) == deeper
    assert decode_payload(b"[" * 100_000) == "[" * 100_000
    event = Event.new(node="n", source="t", name="x", payload=decode_payload(fits.encode()))
    assert Event.from_json(event.to_json()) == event
