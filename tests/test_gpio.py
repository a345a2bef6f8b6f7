"""GPIO inputs and outputs on gpiozero's MockFactory (no real pins here). The bounce window
runs on a clock and timers the tests move by hand, except in the two tests that check the
real ones (a threading.Timer, and the agent as wiring builds it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from relay.config import GpioDeviceConfig, GpioSourceConfig
from relay.devices.gpio import GpioDevice
from relay.errors import DeviceError
from relay.sources.gpio import GpioSource
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent
from tests.helpers.http_server import RemoteServer
from tests.helpers.wait import wait_until


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path, durability="memory") as s:
        s.register_sinks(["out"])
        yield s


def door(**kw: object) -> GpioSourceConfig:
    return GpioSourceConfig.model_validate(
        {
            "type": "gpio",
            "pin": 17,
            "name": "front_door",
            "on_active": "door opened",
            "on_inactive": "door closed",
            "bounce_ms": 50,
            **kw,
        }
    )


def names(spool: Spool) -> list[str]:
    spool.sync()
    return [r.event.name for r in spool.lease("out", 100).records]


@dataclass
class _Timer:
    due: float
    action: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTime:
    """The source's clock and timer seam, moved by hand: ``advance`` moves the clock and
    runs, on the test's thread, every timer that has come due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[_Timer] = []  # every timer started, fired or not

    def clock(self) -> float:
        return self.now

    def timer(self, delay: float, action: Callable[[], None]) -> _Timer:
        timer = _Timer(self.now + delay, action)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in self.timers:
            if timer.due <= self.now and not timer.cancelled:
                timer.cancelled = True  # fired: once only
                timer.action()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def on_fake_time(
    cfg: GpioSourceConfig, spool: Spool, factory: MockFactory, fake_time: FakeTime
) -> GpioSource:
    return GpioSource(
        [cfg],
        spool,
        node="n",
        pin_factory=factory,
        clock=fake_time.clock,
        timer=fake_time.timer,
    )


def test_edges_become_events(spool: Spool, mock_factory: MockFactory, fake_time: FakeTime) -> None:
    source = on_fake_time(door(), spool, mock_factory, fake_time)
    source.start()
    try:
        pin = mock_factory.pin(17)
        pin.drive_low()  # pull-up: the switch closes to ground, the input is active
        fake_time.advance(0.08)
        pin.drive_high()
        fake_time.advance(0.08)
    finally:
        source.stop()
    assert names(spool) == ["door closed", "door opened", "door closed"]
    events = [r.event for r in spool.lease("out", 100).records]
    assert events[0].payload == {
        "input": "front_door",
        "pin": 17,
        "state": "inactive",
        "initial": True,
    }
    assert events[1].payload == {"input": "front_door", "pin": 17, "state": "active"}
    assert events[1].source == "gpio"


def test_bounces_within_bounce_ms_are_suppressed(
    spool: Spool, mock_factory: MockFactory, fake_time: FakeTime
) -> None:
    source = on_fake_time(door(initial_event=False), spool, mock_factory, fake_time)
    source.start()
    try:
        pin = mock_factory.pin(17)
        for _ in range(5):  # a reed switch chattering for a few ms as the door opens
            pin.drive_low()
            pin.drive_high()
        pin.drive_low()
        wait_until(lambda: len(names(spool)) >= 1, 2)
        fake_time.advance(0.15)  # past the window: the settled state is read once more
    finally:
        source.stop()
    assert names(spool) == ["door opened"]
    assert len(fake_time.timers) == 1  # one look per window, however long the chatter


def test_final_state_is_reported_when_the_window_closes(
    spool: Spool, mock_factory: MockFactory, fake_time: FakeTime
) -> None:
    source = on_fake_time(door(initial_event=False), spool, mock_factory, fake_time)
    source.start()
    try:
        pin = mock_factory.pin(17)
        pin.drive_low()
        pin.drive_high()  # within the window: suppressed, but it is where the pin ends up
        fake_time.advance(0.04)
        assert names(spool) == ["door opened"]  # not before the window closes
        fake_time.advance(0.02)
    finally:
        source.stop()
    assert names(spool) == ["door opened", "door closed"]


def test_final_state_is_reported_after_the_window(spool: Spool, mock_factory: MockFactory) -> None:
    """On the real clock and a real threading.Timer (the defaults): the seam's other side."""
    source = GpioSource([door(initial_event=False)], spool, node="n", pin_factory=mock_factory)
    source.start()
    try:
        pin = mock_factory.pin(17)
        pin.drive_low()
        pin.drive_high()  # within the window: suppressed, but it is where the pin ends up
        wait_until(lambda: len(names(spool)) == 2, 2, "the settled state")
    finally:
        source.stop()
    assert names(spool) == ["door opened", "door closed"]


def test_active_high_without_pull(
    spool: Spool, mock_factory: MockFactory, fake_time: FakeTime
) -> None:
    cfg = door(pull_up="none", active_high=True, initial_event=False, bounce_ms=0)
    source = on_fake_time(cfg, spool, mock_factory, fake_time)
    source.start()
    try:
        mock_factory.pin(17).drive_high()
        wait_until(lambda: names(spool) == ["door opened"], 2)
    finally:
        source.stop()


def test_gpio_events_reach_an_http_sink(write_config: Callable[..., Path]) -> None:
    with RemoteServer() as remote:
        cfg = write_config(
            toml.gpio(pin_factory="mock"),
            toml.gpio_source(
                17,
                "front_door",
                bounce_ms=20,
                on_active="door opened",
                on_inactive="door closed",
            ),
            toml.http_sink(remote.url),
        )
        with running_agent(cfg) as agent:
            source = next(c for c in agent.components if isinstance(c, GpioSource))
            pin = source.pin_factory.pin(17)
            pin.drive_low()
            time.sleep(0.05)
            pin.drive_high()
            wait_until(lambda: len(remote.accepted()) == 3, 10)
        assert [e["name"] for e in remote.accepted()] == [
            "door closed",
            "door opened",
            "door closed",
        ]


# ------------------------------------------------------------------ outputs


def test_gpio_device_actions(mock_factory: MockFactory) -> None:
    cfg = GpioDeviceConfig(name="garage", type="gpio", pin=27)
    device = GpioDevice(cfg, pin_factory=mock_factory)
    pin = mock_factory.pin(27)
    try:
        device.run("on", {}, command_id="1", timeout=5)
        assert pin.state
        device.run("off", {}, command_id="2", timeout=5)
        assert not pin.state
        device.run("toggle", {}, command_id="3", timeout=5)
        assert pin.state
        device.run("off", {}, command_id="4", timeout=5)
        started = time.monotonic()
        device.run("pulse", {"ms": 100}, command_id="5", timeout=5)
        assert time.monotonic() - started >= 0.1
        assert not pin.state
        assert [s.state for s in pin.states][-2:] == [True, False]
        with pytest.raises(DeviceError, match="pulse needs"):
            device.run("pulse", {"ms": -1}, command_id="6", timeout=5)
        with pytest.raises(DeviceError, match="longer than"):
            device.run("pulse", {"ms": 3000}, command_id="7", timeout=1)
    finally:
        device.close()
    assert device.not_retried == {"toggle"}
