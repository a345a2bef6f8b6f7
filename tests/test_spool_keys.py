"""A producer's key (MQTT: packet id and digest) stored with the event: a message sent again
(DUP) that is stored already is recognised; a new message under a reused packet id (DUP
clear) is always stored; the keyed rows stay after delivery, as far back as KEEP_KEYED."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.event import Command, Event
from relay.spool import SourceKey, Spool
from relay.spool.schema import KEEP_KEYED


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path, durability="normal") as s:
        s.register_sinks(["a"])
        yield s


def ev(n: int) -> Event:
    return Event.new(node="t", source="mqtt", name="home/door", payload=n)


def put_once(spool: Spool, event: Event, key: SourceKey) -> bool:
    """Whether it was stored, once its commit returned."""
    done = threading.Event()
    result: list[bool | None] = []

    def reply(stored: bool | None, error: SpoolError | None) -> None:
        assert error is None
        result.append(stored)
        done.set()

    spool.put_once_async(event, key, reply)
    assert done.wait(10)
    return bool(result[0])


def payloads(spool: Spool) -> list[int]:
    return [r.event.payload for r in spool.lease("a", 100).records]


def test_a_message_sent_again_is_stored_once(spool: Spool) -> None:
    assert put_once(spool, ev(1), SourceKey(7, b"d1", resent=False))
    assert not put_once(spool, ev(1), SourceKey(7, b"d1", resent=True))
    assert payloads(spool) == [1]


def test_a_reused_packet_id_without_dup_is_a_new_message(spool: Spool) -> None:
    assert put_once(spool, ev(1), SourceKey(7, b"same", resent=False))
    assert put_once(spool, ev(2), SourceKey(7, b"same", resent=False))
    assert payloads(spool) == [1, 2]


def test_dup_with_another_digest_is_a_new_message(spool: Spool) -> None:
    assert put_once(spool, ev(1), SourceKey(7, b"d1", resent=False))
    assert put_once(spool, ev(2), SourceKey(7, b"d2", resent=True))
    assert payloads(spool) == [1, 2]


def test_delivered_keyed_rows_stay_to_recognise_a_redelivery(spool: Spool) -> None:
    assert put_once(spool, ev(1), SourceKey(7, b"d1", resent=False))
    spool.put(ev(2))  # no key: deleted once delivered, as always
    spool.ack("a", spool.lease("a", 10).records[-1].seq)
    spool.sync()
    assert spool.stats().rows == 1  # the keyed one
    assert payloads(spool) == []
    assert not put_once(spool, ev(1), SourceKey(7, b"d1", resent=True))
    assert payloads(spool) == []  # recognised, not queued again


def test_only_the_newest_keyed_rows_count(spool: Spool) -> None:
    assert put_once(spool, ev(0), SourceKey(7, b"old", resent=False))
    spool.put_many([ev(n) for n in range(KEEP_KEYED)])  # the stream moves on
    assert put_once(spool, ev(0), SourceKey(7, b"old", resent=True))  # too old to be it
    assert len(payloads(spool)) == 100  # (the first 100 of everything pending)


def test_a_command_sent_again_is_recorded_once(spool: Spool) -> None:
    cmd = Command.of(id="c1", device="lamp", action="on", args={}, source="mqtt", received_at=0)
    again = Command.of(id="c2", device="lamp", action="on", args={}, source="mqtt", received_at=0)
    recorded: list[bool | None] = []
    done = threading.Event()

    def reply(new: bool | None, error: SpoolError | None) -> None:
        recorded.append(new)
        if len(recorded) == 3:
            done.set()

    spool.record_command_async(cmd, reply, key=SourceKey(3, b"on", resent=False))
    # Without an id in the payload, the broker's copy gets a new one: only the key tells.
    spool.record_command_async(again, reply, key=SourceKey(3, b"on", resent=True))
    spool.record_command_async(again, reply, key=SourceKey(4, b"on", resent=False))
    assert done.wait(10)
    assert recorded == [True, False, True]
