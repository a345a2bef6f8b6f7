"""relay.mqtt.drops in-process: the broker's $SYS drop counter, fed as the connection would
feed it, turned into one WARNING when it starts rising and one line when it stops; figures
kept for relay status across restarts; a broker without $SYS said once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from relay.logonce import LogOnce
from relay.mqtt import Message, Session
from relay.mqtt.drops import DropWatch
from relay.report import status_text
from relay.spool import BrokerDrops, Spool
from tests.helpers.wait import wait_until

COUNTER = b"$SYS/broker/publish/messages/dropped"
VERSION = b"$SYS/broker/version"
WHERE = "pi.local:1883"


class Store:
    """The spool's twin for the figures."""

    def __init__(self, state: BrokerDrops | None = None) -> None:
        self.state = state

    def broker_drops(self) -> BrokerDrops | None:
        return self.state

    def note_broker_drops(self, drops: BrokerDrops) -> None:
        self.state = drops


def session() -> Session:
    return Session(
        lambda mid, qos: None,
        lambda: None,
        resumed=True,
        lock=threading.Lock(),
        refused=LogOnce(),
        on_hand_back=lambda reason: None,
    )


def msg(topic: bytes, payload: bytes, s: Session, *, retain: bool = False) -> Message:
    return Message(topic, payload, 0, 0, False, retain, s)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_rise_is_one_warning_and_its_end_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.mqtt.drops")
    store = Store()
    watch = DropWatch(WHERE, store, stop_s=0.3)
    s = session()
    watch.on_connect(s)
    watch.on_message(msg(VERSION, b"mosquitto version 2.0.11", s, retain=True))
    watch.on_message(msg(COUNTER, b"0", s, retain=True))  # where the count starts
    assert warnings(caplog) == []
    for value in (b"250", b"400", b"410"):  # a rise, every sys_interval
        watch.on_message(msg(COUNTER, value, s))
    [warning] = warnings(caplog)
    assert WHERE in warning and "dropped 250 messages" in warning
    assert "messages for relay may be among them" in warning
    assert "max_queued_messages" in warning
    assert store.state is not None
    assert (store.state.dropped, store.state.dropping) == (410, True)
    wait_until(lambda: not store.state.dropping, 5, "the drops to count as over")
    [over] = [r.getMessage() for r in caplog.records if "stopped dropping" in r.getMessage()]
    assert "410 dropped" in over
    watch.settle()


def test_drops_while_relay_was_away_are_news(caplog: pytest.LogCaptureFixture) -> None:
    """The counter seen at the last run is kept: a higher one at the next start means the
    broker dropped while relay was down (when it drops most); a lower one, that it
    restarted and dropped that many since."""
    store = Store(BrokerDrops(counter=1000, visible=True))
    watch = DropWatch(WHERE, store)
    s = session()
    watch.on_connect(s)
    watch.on_message(msg(COUNTER, b"1250", s, retain=True))
    assert store.state is not None and store.state.dropped == 250
    watch.settle()
    restarted = DropWatch(WHERE, Store(BrokerDrops(counter=1000, visible=True)))
    restarted.on_connect(s)
    restarted.on_message(msg(COUNTER, b"30", s, retain=True))
    assert restarted.state.dropped == 30
    assert len(warnings(caplog)) == 2
    restarted.settle()


def test_nothing_dropped_nothing_said(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(BrokerDrops(counter=7, visible=True))
    watch = DropWatch(WHERE, store, quiet_s=0.1)
    s = session()
    watch.on_connect(s)
    watch.on_message(msg(VERSION, b"mosquitto version 2.0.11", s, retain=True))
    watch.on_message(msg(COUNTER, b"7", s, retain=True))
    time.sleep(0.3)  # past quiet_s: $SYS was heard, so nothing to say about it either
    watch.settle()
    assert warnings(caplog) == []
    assert store.state is not None and store.state.dropped == 0


def test_a_broker_without_sys_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    watch = DropWatch(WHERE, store, quiet_s=0.1)
    for _ in range(3):  # three connections, nothing from $SYS on any
        watch.on_connect(session())
        time.sleep(0.3)
    watch.settle()
    [warning] = warnings(caplog)
    assert "cannot see whether the broker drops messages" in warning
    assert store.state is not None and store.state.visible is False


def test_the_figures_reach_relay_status(tmp_path: Path) -> None:
    """Through the spool file: what relay status (another process) reads."""
    with Spool.open(tmp_path) as spool:
        spool.register_sinks(["cloud"])
        spool.note_broker_drops(
            BrokerDrops(counter=250, dropped=250, dropping=True, last_drop_at=time.time() - 90)
        )
    with Spool.open(tmp_path) as spool:
        stats = spool.stats()
    assert stats.broker is not None and stats.broker.dropped == 250
    text = status_text(stats, broker=WHERE)
    [line] = [line for line in text.splitlines() if "dropped" in line]
    assert line.startswith(f"broker {WHERE} dropped 250 messages (the last 1m ago")
    assert len(line) <= 80
