"""The command executor: device commands run strictly one at a time, in arrival order.

Commands are recorded in the spool before they run (by whichever input received them), so
the order is the spool's and an id seen before is never recorded twice. For each command:
too old (``ttl_s``) is ``expired`` and not run; an unknown device or action is ``failed``;
otherwise it is marked running (committed), then its driver is called. A connection error
before the device took it (``DeviceUnavailable``) is retried in place with backoff until the
TTL, nothing overtaking it; any other error is ``failed``. A command found running at start
was interrupted by a crash: it is not run again, its outcome is ``interrupted``. Every
outcome is an event, ``command.<device>``, stored with the command's end in one commit.

``step(now)`` does one unit of work (tests drive it with a fake clock); its thread
(``relay.runner``) sleeps until a command is recorded or a retry is due.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from relay.backoff import Backoff
from relay.devices import Device
from relay.errors import DeviceError, DeviceUnavailable
from relay.event import Command, Event
from relay.metrics import NO_METRICS, Metrics
from relay.runner import StepRunner

log = logging.getLogger(__name__)

Outcome = Callable[[str, str | None], None]  # (status, error) -> None


class Status(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    EXPIRED = "expired"
    INTERRUPTED = "interrupted"


class Step(enum.Enum):
    DONE = "done"  # a command ended (any status)
    RETRY = "retry"  # the device was unreachable; the same command is tried again later
    WAIT = "wait"  # that retry is not due yet
    IDLE = "idle"  # nothing queued


class CommandStore(Protocol):
    """What the executor needs of the spool (``relay.spool.Spool``): the command queue."""

    @property
    def commands_version(self) -> int: ...

    def next_command(self) -> Command | None: ...

    def running_commands(self) -> list[Command]: ...

    def command_state(self, command_id: str) -> tuple[str, str | None, str | None] | None: ...

    def start_command(self, command_id: str) -> None: ...

    def finish_command(
        self, command_id: str, status: str, error: str | None, outcome: Event
    ) -> None: ...

    def wait_for_command(self, version: int, timeout: float | None) -> int: ...

    def notify(self) -> None: ...


class Arrivals:
    """When each command reached this process, on the monotonic clock: its TTL counts from
    there (wall time on a Pi without a real-time clock can jump by years at boot). The
    inputs mark a command once it is recorded; the executor reads it. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._at: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, command_id: str) -> None:
        """An input recorded this command just now."""
        with self._lock:
            self._at[command_id] = self._clock()

    def at(self, command_id: str, otherwise: Callable[[], float]) -> float:
        """When it arrived; for one not marked here (recorded by another process, or before
        a restart), ``otherwise()``, remembered so that retries count consistently."""
        with self._lock:
            if command_id not in self._at:
                self._at[command_id] = otherwise()
            return self._at[command_id]

    def forget(self, command_id: str) -> None:
        with self._lock:
            self._at.pop(command_id, None)


@dataclass
class _Running:
    cmd: Command
    device: Device
    started: float  # monotonic, when the first attempt began
    attempts: int = 0
    next_attempt: float = float("-inf")


class CommandExecutor:
    name = "commands"
    is_sink = False
    last_error: str | None = None  # a failing command is its outcome, not the agent's state

    def __init__(
        self,
        spool: CommandStore,
        devices: Mapping[str, Device],
        *,
        node: str,
        ttl_s: float,
        timeout_s: float,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        metrics: Metrics = NO_METRICS,
        arrivals: Arrivals | None = None,
    ) -> None:
        self.spool = spool
        self.devices = devices
        self.node = node
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff(initial=0.5, factor=2.0, cap=5.0)
        self._rng = rng or random.Random()
        self._clock, self._wall = clock, wall
        self._metrics = metrics
        self._current: _Running | None = None
        self.arrivals = arrivals or Arrivals(clock)
        self._waiters: dict[str, list[Outcome]] = {}
        self._lock = threading.Lock()
        # Drivers honour the timeout, so a step of more than twice it is a hang.
        self._runner = StepRunner(
            self,
            name="commands",
            what="command executor",
            backoff=self.backoff,
            stall_s=2 * timeout_s + 10,
            daemon=False,
            clock=clock,
            rng=self._rng,
        )

    # ---------------------------------------------------------------- inputs' side

    def on_outcome(self, command_id: str, callback: Outcome) -> None:
        """Call ``callback(status, error)`` when the command ends (at once if it has)."""
        state = self.spool.command_state(command_id)
        if state is not None and state[0] == "done":
            callback(state[1] or Status.FAILED, state[2])
            return
        with self._lock:
            self._waiters.setdefault(command_id, []).append(callback)
        state = self.spool.command_state(command_id)  # it may have ended meanwhile
        if state is not None and state[0] == "done":
            self._notify(command_id, state[1] or Status.FAILED, state[2])

    # ---------------------------------------------------------------- one step

    def recover(self) -> None:
        """Commands running when the last agent died are not run again: ``interrupted``."""
        for cmd in self.spool.running_commands():
            log.warning(
                "command %s (%s %s) was running when relay stopped: not run again",
                cmd.id,
                cmd.device,
                cmd.action,
            )
            self._finish(cmd, Status.INTERRUPTED, "relay stopped while it ran", 0.0)

    def step(self, now: float) -> Step:
        """Start the next command or retry the current one, if due. ``now``: monotonic."""
        if self._current is None:
            cmd = self.spool.next_command()
            if cmd is None:
                return Step.IDLE
            if not self._begin(cmd, now):
                return Step.DONE
        current = self._current
        assert current is not None
        if now < current.next_attempt:
            return Step.WAIT
        return self._attempt(current, now)

    def _begin(self, cmd: Command, now: float) -> bool:
        """Checks before the first attempt; False when the command already ended."""
        device = self.devices.get(cmd.device)
        if self._age(cmd, now) > self.ttl_s:
            self._finish(cmd, Status.EXPIRED, f"older than ttl_s ({self.ttl_s:g}s)", 0.0)
        elif device is None:
            self._finish(cmd, Status.FAILED, f"unknown device {cmd.device!r}", 0.0)
        elif cmd.action not in device.actions:
            self._finish(
                cmd,
                Status.FAILED,
                f"{cmd.device} has no action {cmd.action!r} "
                f"(it has {', '.join(sorted(device.actions))})",
                0.0,
            )
        else:
            self.spool.start_command(cmd.id)
            self._current = _Running(cmd, device, now)
            return True
        return False

    def _attempt(self, current: _Running, now: float) -> Step:
        cmd, device = current.cmd, current.device
        current.attempts += 1
        try:
            # The TTL decides whether a command starts; once started, timeout_s bounds it.
            device.run(cmd.action, cmd.args, command_id=cmd.id, timeout=self.timeout_s)
        except DeviceUnavailable as exc:
            return self._unavailable(current, exc, now)
        except DeviceError as exc:
            self._end(Status.FAILED, str(exc))
        except Exception as exc:  # a driver bug: the command may have run; never run it again
            log.exception("command %s: driver %s failed unexpectedly", cmd.id, cmd.device)
            self._end(Status.FAILED, f"driver error: {exc!r}")
        else:
            self._end(Status.OK, None)
        return Step.DONE

    def _unavailable(self, current: _Running, exc: DeviceUnavailable, now: float) -> Step:
        cmd = current.cmd
        if cmd.action in current.device.not_retried:
            self._end(Status.FAILED, f"{exc} (a {cmd.action} is never retried)")
            return Step.DONE
        delay = self.backoff.delay(current.attempts, self._rng)
        if self._age(cmd, now) + delay > self.ttl_s:
            self._end(Status.EXPIRED, f"device unreachable until ttl_s ({self.ttl_s:g}s): {exc}")
            return Step.DONE
        if current.attempts == 1:
            log.warning("command %s: %s; retrying until it is reachable", cmd.id, exc)
        current.next_attempt = now + delay
        return Step.RETRY

    def _end(self, status: Status, error: str | None) -> None:
        current = self._current
        assert current is not None
        self._current = None
        elapsed = (self._clock() - current.started) * 1000
        self._finish(current.cmd, status, error, elapsed)

    def _finish(self, cmd: Command, status: Status, error: str | None, duration_ms: float) -> None:
        payload = {
            "id": cmd.id,
            "device": cmd.device,
            "action": cmd.action,
            "status": str(status),
            "error": error,
            "duration_ms": round(duration_ms, 1),
            "source": cmd.source,
        }
        event = Event.new(
            node=self.node, source="command", name=f"command.{cmd.device}", payload=payload
        )
        self.spool.finish_command(cmd.id, str(status), error, event)
        self._metrics.command(cmd.device, str(status))
        level = logging.INFO if status is Status.OK else logging.WARNING
        log.log(
            level,
            "command %s: %s %s %s%s",
            cmd.id,
            cmd.device,
            cmd.action,
            status,
            f" ({error})" if error else "",
        )
        self.arrivals.forget(cmd.id)
        self._notify(cmd.id, str(status), error)

    def _notify(self, command_id: str, status: str, error: str | None) -> None:
        with self._lock:
            callbacks = self._waiters.pop(command_id, [])
        for callback in callbacks:
            callback(status, error)

    def _age(self, cmd: Command, now: float) -> float:
        # Recorded by another process or before a restart: only the wall clock knows when.
        received = self.arrivals.at(cmd.id, lambda: now - max(self._wall() - cmd.received_at, 0.0))
        return now - received

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        self.recover()
        self._runner.start()

    def stop(self) -> None:
        """Stop after the command in progress (a retry wait ends at once)."""
        self._runner.stop()
        for device in self.devices.values():
            device.close()

    def alive(self) -> bool:
        """For the watchdog: running, and no step past twice the command timeout."""
        return self._runner.alive()

    @property
    def attempts(self) -> int:
        """Attempts at the command in progress (0 when there is none)."""
        current = self._current
        return current.attempts if current is not None else 0

    # ---------------------------------------------------------------- what the runner calls

    def version(self) -> int:
        return self.spool.commands_version

    def advance(self, now: float) -> float | None:
        step = self.step(now)
        if step is Step.IDLE:
            return None
        if step in (Step.WAIT, Step.RETRY) and self._current is not None:
            return max(self._current.next_attempt - self._clock(), 0.0)
        return 0.0

    def sleep(self, version: int, timeout: float | None, stop: threading.Event) -> None:
        if timeout is None:
            self.spool.wait_for_command(version, None)
        else:
            stop.wait(timeout)

    def wake(self) -> None:
        self.spool.notify()
