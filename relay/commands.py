"""The command executor: device commands run strictly one at a time, in arrival order.

Commands are recorded in the spool before they run (by whichever input received them), so
the order is the spool's and an id seen before is never recorded twice. For each command:
too old (``ttl_s``) is ``expired`` and not run; an unknown device or action is ``failed``;
otherwise it is marked running (committed), then its driver is called. A connection error
before the device took it (``DeviceUnavailable``) is retried in place with backoff until the
TTL, nothing overtaking it; any other error is ``failed``. A command found running at start
was interrupted by a crash: it is not run again, its outcome is ``interrupted``. Every
outcome is an event, ``command.<device>``, stored with the command's end in one commit.

``step(now)`` does one unit of work (tests drive it with a fake clock); ``run()`` sleeps
until a command is recorded or a retry is due.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.backoff import Backoff
from relay.devices import Device
from relay.errors import DeviceError, DeviceUnavailable, SpoolError
from relay.event import Command, Event
from relay.metrics import NO_METRICS, Metrics
from relay.spool import Spool

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


@dataclass
class _Running:
    cmd: Command
    device: Device
    started: float  # monotonic, when the first attempt began
    attempts: int = 0
    next_attempt: float = float("-inf")


class CommandExecutor:
    name = "commands"

    def __init__(
        self,
        spool: Spool,
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
    ) -> None:
        self.spool = spool
        self.devices = devices
        self.node = node
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff(initial=0.5, factor=2.0, cap=5.0)
        self.busy_since: float | None = None  # monotonic start of the step under way
        self._rng = rng or random.Random()
        self._clock, self._wall = clock, wall
        self._metrics = metrics
        self._current: _Running | None = None
        self._received: dict[str, float] = {}  # id -> monotonic receive time, this process
        self._waiters: dict[str, list[Outcome]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- inputs' side

    def received(self, command_id: str) -> None:
        """An input recorded this command just now: measure its TTL on the monotonic clock
        (wall time on a Pi without a real-time clock can jump by years at boot)."""
        with self._lock:
            self._received[command_id] = self._clock()

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
        with self._lock:
            self._received.pop(cmd.id, None)
        self._notify(cmd.id, str(status), error)

    def _notify(self, command_id: str, status: str, error: str | None) -> None:
        with self._lock:
            callbacks = self._waiters.pop(command_id, [])
        for callback in callbacks:
            callback(status, error)

    def _age(self, cmd: Command, now: float) -> float:
        with self._lock:
            received = self._received.get(cmd.id)
            if received is None:
                # Recorded by another process or before a restart: only the wall clock knows
                # when. Pin that to the monotonic clock once, so retries count consistently.
                received = now - max(self._wall() - cmd.received_at, 0.0)
                self._received[cmd.id] = received
        return now - received

    # ---------------------------------------------------------------- the thread

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self.run, name="commands")
        self._thread.start()

    def stop(self) -> None:
        """Stop after the command in progress (a retry wait ends at once)."""
        self._stop.set()
        self.spool.notify()
        if self._thread is not None:
            self._thread.join()
        for device in self.devices.values():
            device.close()

    def alive(self) -> bool:
        """For the watchdog: running, and no step past twice the command timeout (drivers
        honour the timeout, so longer is a hang)."""
        busy_since = self.busy_since
        stuck = busy_since is not None and self._clock() - busy_since > 2 * self.timeout_s + 10
        return self._thread is not None and self._thread.is_alive() and not stuck

    @property
    def attempts(self) -> int:
        """Attempts at the command in progress (0 when there is none)."""
        current = self._current
        return current.attempts if current is not None else 0

    def run(self) -> None:
        errors = 0
        spool_error: str | None = None  # the spool's refusal (a full disk), logged once
        while not self._stop.is_set():
            version = self.spool.commands_version  # before looking: no missed wake-up
            self.busy_since = self._clock()
            try:
                step = self.step(self._clock())
                errors, spool_error = 0, None
            except SpoolError as exc:  # the disk is full or read-only: no bug, no traceback
                errors += 1
                delay = self.backoff.delay(errors, self._rng)
                if str(exc) != spool_error:
                    log.error("command executor: %s; trying again in %.1fs", exc, delay)
                spool_error = str(exc)
                self._stop.wait(delay)
                continue
            except Exception:  # the thread's top: log, count, back off, go on
                errors += 1
                delay = self.backoff.delay(errors, self._rng)
                log.exception("command executor error; retrying in %.1fs", delay)
                self._stop.wait(delay)
                continue
            finally:
                self.busy_since = None
            if step is Step.IDLE:
                self.spool.wait_for_command(version, None)
            elif step in (Step.WAIT, Step.RETRY) and self._current is not None:
                self._stop.wait(max(self._current.next_attempt - self._clock(), 0.0))
