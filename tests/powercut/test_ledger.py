"""The power-cut harness's own parts that need no virtual machine: reading relay's PUBACKs
from the broker's log, the verdicts of the ledger, module load order, the initramfs archive.
Fast: part of the default run (only test_powercut.py boots a guest)."""

from __future__ import annotations

from pathlib import Path

from tests.powercut.boot import _Cpio, _load_order
from tests.powercut.guest import SpoolAfterCut
from tests.powercut.ledger import Cut, Report, first_arrival_disorder
from tests.powercut.stream import broker_acks

RELAY = "relay-powercut"


def _log(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mosquitto.log"
    path.write_text("".join(f"1796198594: {line}\n" for line in lines))
    return path


def _publish(mid: int, topic: str, dup: int = 0) -> str:
    return f"Sending PUBLISH to {RELAY} (d{dup}, q1, r0, m{mid}, '{topic}', ... (8 bytes))"


def _puback(mid: int) -> str:
    return f"Received PUBACK from {RELAY} (Mid: {mid}, RC:0)"


def test_a_puback_names_the_number_its_packet_id_last_carried(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        f"New client connected from 127.0.0.1:5000 as {RELAY} (p2, c0, k10).",
        _publish(1, "pc/seq/0"),
        _publish(2, "pc/seq/1"),
        _puback(1),
        _publish(1, "pc/seq/2"),  # id 1 free again: reused
        _puback(1),
        "Received PUBACK from relay-other (Mid: 2, RC:0)",  # another client's
        _publish(2, "pc/seq/1", dup=1),  # resent, still not acknowledged
    )
    acks = broker_acks(log, RELAY, "pc/seq", [0])
    assert acks.acked == [{0, 2}]
    assert acks.sent == [4]
    assert acks.connects == [1]
    assert acks.dropped == []


def test_lines_belong_to_the_boot_whose_offset_precedes_them(tmp_path: Path) -> None:
    first = [_publish(1, "pc/seq/0"), _puback(1)]
    log = _log(tmp_path, *first, _publish(1, "pc/seq/1"), _puback(1))
    boundary = len("".join(f"1796198594: {line}\n" for line in first))
    acks = broker_acks(log, RELAY, "pc/seq", [0, boundary])
    assert acks.acked == [{0}, {1}]
    assert acks.through(0) == {0}
    assert acks.through(1) == {0, 1}


def test_a_message_outside_the_ledger_takes_its_packet_id_over(tmp_path: Path) -> None:
    log = _log(
        tmp_path,
        _publish(1, "pc/seq/7"),
        _puback(1),
        _publish(1, "pc/retained"),
        _puback(1),  # the retained message's, not 7's again
    )
    assert broker_acks(log, RELAY, "pc/seq", [0]).acked == [{7}]


def test_the_brokers_drop_notice_is_kept(tmp_path: Path) -> None:
    log = _log(tmp_path, f"Outgoing messages are being dropped for client {RELAY}.")
    assert broker_acks(log, RELAY, "pc/seq", [0]).dropped


def test_relays_subscription_to_the_drop_counter_is_no_drop(tmp_path: Path) -> None:
    """relay watches $SYS/broker/publish/messages/dropped: its SUBSCRIBE and the counter's
    PUBLISH lines name the topic, and are no drop."""
    log = _log(
        tmp_path,
        f"{RELAY} 0 $SYS/broker/publish/messages/dropped",
        _publish(3, "$SYS/broker/publish/messages/dropped"),
    )
    assert broker_acks(log, RELAY, "pc/seq", [0]).dropped == []


def _report(**over: object) -> Report:
    ok = SpoolAfterCut(integrity="ok", fsck="ok")
    cut = Cut(index=1, how="steady", after_s=9.0, subscribed_s=5.0, started=True, spool=ok)
    fields: dict[str, object] = {
        "durability": "full",
        "cuts": [cut],
        "published": 10,
        "acknowledged": 10,
        "lost": [],
        "missing_unacked": [],
        "deliveries": 12,
        "distinct": 10,
        "out_of_order": [],
        "final_integrity": "ok",
        "dropped_by_broker": [],
        "boot_to_subscribed": [5.0, 6.0],
    }
    fields.update(over)
    return Report(**fields)  # type: ignore[arg-type]


def test_a_clean_run_has_no_problems_and_one_summary_line() -> None:
    report = _report()
    assert report.problems(expect_loss=False) == []
    assert report.summary() == "power cuts: 1, acknowledged: 10, lost: 0, duplicates: 2"


def test_loss_fails_unless_expected_but_an_unsound_ledger_always_fails() -> None:
    lossy = _report(lost=[3, 4, 5])
    assert lossy.problems(expect_loss=False)
    assert lossy.problems(expect_loss=True) == []
    unsound = _report(missing_unacked=[8])
    assert unsound.problems(expect_loss=True)
    assert _report(dropped_by_broker=["dropped"]).problems(expect_loss=True)


def test_a_spool_that_fails_its_check_fails_the_run() -> None:
    bad = SpoolAfterCut(integrity="*** in database main ***", fsck="ok")
    cut = Cut(index=1, how="burst", after_s=3.0, subscribed_s=2.0, started=True, spool=bad)
    assert not _report(cuts=[cut]).integrity_ok()
    assert _report(cuts=[cut]).problems(expect_loss=True)


def test_order_is_judged_by_first_arrivals() -> None:
    assert first_arrival_disorder([0, 1, 2, 1, 2, 3]) == []  # a replay is not disorder
    assert first_arrival_disorder([0, 2, 1, 3]) == [1]


def test_modules_load_after_what_they_depend_on(tmp_path: Path) -> None:
    files = {}
    for name, depends in {"a": "b,c", "b": "c", "c": ""}.items():
        files[name] = tmp_path / f"{name}.ko"
        files[name].write_bytes(b"\x7fELF...depends=" + depends.encode() + b"\0vermagic=6.1\0")
    order: list[str] = []
    _load_order("a", files, order)
    assert order == ["c", "b", "a"]


def test_the_initramfs_is_a_newc_archive_with_a_trailer() -> None:
    cpio = _Cpio()
    cpio.add("init", 0o100755, b"#!/bin/busybox sh\n")
    data = cpio.close()
    assert data.startswith(b"070701")
    assert b"init\0" in data
    assert b"TRAILER!!!\0" in data
    assert len(data) % 4 == 0
