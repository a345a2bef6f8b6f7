"""GPIO inputs (a reed switch on a door, a PIR sensor) on gpiozero: each change of an input
becomes an event named ``on_active`` or ``on_inactive``.

Debouncing is done here, not by the pin library: gpiozero's pin factories disagree on what a
bounce time means (lgpio waits for the level to be stable, RPi.GPIO drops edges after one,
MockFactory ignores it). relay reports the first edge at once (a door opening is news now),
ignores the chatter for ``bounce_ms``, then reads the pin once more and reports its state if
it differs from the last one reported, so the last event always matches the pin.

gpiozero calls back on its own threads; the event is put in the spool without waiting. A
pin cannot be asked to send again, so an event the spool refuses (full, read-only) is logged
at ERROR and counted. The pin factory is injected, never set globally; so are the clock and
the timer of the bounce window (tests step them by hand).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from gpiozero import DigitalInputDevice
from gpiozero.pins import Factory

from relay.config import GpioSourceConfig
from relay.errors import SpoolError
from relay.event import Event
from relay.sources import Intake

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# timer(delay, action): call ``action`` once, ``delay`` seconds on, unless cancelled. Never
# from within the call itself: the edge that starts the timer holds the lock ``action`` takes.
Timer = Callable[[float, Callable[[], None]], Cancellable]


def thread_timer(delay: float, action: Callable[[], None]) -> Cancellable:
    """A daemon ``threading.Timer``, started: it never keeps the process alive."""
    timer = threading.Timer(delay, action)
    timer.daemon = True
    timer.start()
    return timer


class _Input:
    """One watched pin and its debounce state."""

    def __init__(self, cfg: GpioSourceConfig, device: DigitalInputDevice) -> None:
        self.cfg = cfg
        self.device = device
        self.lock = threading.Lock()
        self.reported: bool | None = None
        self.quiet_until = float("-inf")  # monotonic end of the bounce window
        self.timer: Cancellable | None = None


class GpioSource:
    name = "gpio"
    is_sink = False
    last_error: str | None = None  # a lost edge is logged (and counted in ``lost``)

    def __init__(
        self,
        cfgs: list[GpioSourceConfig],
        spool: Intake,
        *,
        node: str,
        pin_factory: Factory,
        clock: Callable[[], float] = time.monotonic,
        timer: Timer = thread_timer,
    ) -> None:
        self.cfgs = cfgs
        self.spool = spool
        self.node = node
        self.pin_factory = pin_factory
        self._clock = clock
        self._timer = timer
        self.lost = 0
        self._inputs: list[_Input] = []

    def start(self) -> None:
        for cfg in self.cfgs:
            device = DigitalInputDevice(
                cfg.pin,
                pull_up=None if cfg.pull_up == "none" else cfg.pull_up,
                active_state=cfg.active_high,
                pin_factory=self.pin_factory,
            )
            watched = _Input(cfg, device)
            device.when_activated = lambda _d, w=watched: self._edge(w)
            device.when_deactivated = lambda _d, w=watched: self._edge(w)
            self._inputs.append(watched)
            if cfg.initial_event:
                self._report(watched, bool(device.value), initial=True)
            else:
                watched.reported = bool(device.value)
        log.info("gpio: watching %s", ", ".join(f"{c.name} (pin {c.pin})" for c in self.cfgs))

    def stop(self) -> None:
        for watched in self._inputs:
            with watched.lock:
                if watched.timer is not None:
                    watched.timer.cancel()
            watched.device.close()
        self._inputs = []

    def alive(self) -> bool:
        return True  # gpiozero's threads are its own; a closed pin is a stopped source

    # ---------------------------------------------------------------- gpiozero's threads

    def _edge(self, watched: _Input) -> None:
        now = self._clock()
        with watched.lock:
            if now < watched.quiet_until:
                # Chatter: look again when the window closes (one look per window).
                if watched.timer is None:
                    watched.timer = self._timer(
                        watched.quiet_until - now, lambda: self._settled(watched)
                    )
                return
        self._settled(watched)

    def _settled(self, watched: _Input) -> None:
        with watched.lock:
            watched.timer = None
            if watched.device.closed:
                return
            state = bool(watched.device.value)
            if state == watched.reported:
                return
            watched.reported = state  # under the lock: an edge and a timer may race here
            watched.quiet_until = self._clock() + watched.cfg.bounce_ms / 1000
        self._report(watched, state, initial=False)

    def _report(self, watched: _Input, active: bool, *, initial: bool) -> None:
        cfg = watched.cfg
        watched.reported = active
        payload: dict[str, Any] = {
            "input": cfg.name,
            "pin": cfg.pin,
            "state": "active" if active else "inactive",
        }
        if initial:
            payload["initial"] = True
        name = cfg.on_active if active else cfg.on_inactive
        event = Event.new(node=self.node, source="gpio", name=name, payload=payload)
        self.spool.put_async([event], lambda error: self._stored(cfg, name, error))

    def _stored(self, cfg: GpioSourceConfig, name: str, error: SpoolError | None) -> None:
        if error is not None:
            self.lost += 1
            log.error(
                "gpio: %s event %r not stored (%s); %d lost so far",
                cfg.name,
                name,
                error,
                self.lost,
            )
