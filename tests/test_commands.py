"""The command executor's step(now), with a fake clock and MockDevices: one at a time, in
order, deduplicated, expired, retried in place, interrupted."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.backoff import Backoff
from relay.commands import CommandExecutor, Step
from relay.errors import DeviceError, DeviceUnavailable, SpoolError
from relay.event import Command
from relay.spool import Spool
from tests.helpers.mocks import MockDevice, in_turn
from tests.helpers.wait import wait_until

WALL = 1_800_000_000.0


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool.open(tmp_path) as s:
        s.register_sinks(["out"])
        yield s


def cmd(i: str, action: str = "on", device: str = "lamp", age: float = 0.0) -> Command:
    return Command.of(
        id=i, device=device, action=action, args={}, source="test", received_at=WALL - age
    )


def executor(spool: Spool, *devices: MockDevice, ttl: float = 30.0) -> CommandExecutor:
    return CommandExecutor(
        spool,
        {d.name: d for d in devices},
        node="n",
        ttl_s=ttl,
        timeout_s=5,
        backoff=Backoff(1.0, 2.0, 4.0),
        rng=random.Random(1),
        clock=lambda: 0.0,
        wall=lambda: WALL,
    )


def outcomes(spool: Spool) -> list[dict[str, Any]]:
    return [r.event.payload for r in spool.lease("out", 1000).records]


def run_all(ex: CommandExecutor, now: float = 0.0) -> list[Step]:
    steps = []
    for _ in range(100):
        step = ex.step(now)
        steps.append(step)
        if step is Step.IDLE:
            return steps
        if step in (Step.RETRY, Step.WAIT):
            assert ex._current is not None
            now = ex._current.next_attempt
    raise AssertionError("never idle")


def test_runs_in_arrival_order_one_at_a_time(spool: Spool) -> None:
    lamp = MockDevice()
    for i in range(5):
        assert spool.record_command(cmd(f"c{i}", "on" if i % 2 else "off"))
    assert run_all(executor(spool, lamp)) == [Step.DONE] * 5 + [Step.IDLE]
    assert lamp.calls == [(f"c{i}", "on" if i % 2 else "off") for i in range(5)]
    events = outcomes(spool)
    assert [e["id"] for e in events] == [f"c{i}" for i in range(5)]
    assert {e["status"] for e in events} == {"ok"}
    assert set(events[0]) == {"id", "device", "action", "status", "error", "duration_ms", "source"}
    assert spool.lease("out").records[0].event.name == "command.lamp"


def test_same_id_is_recorded_once(spool: Spool) -> None:
    assert spool.record_command(cmd("dup"))
    assert not spool.record_command(cmd("dup", "off"))
    lamp = MockDevice()
    run_all(executor(spool, lamp))
    assert lamp.calls == [("dup", "on")]
    assert not spool.record_command(cmd("dup"))  # also once it has run


def test_expired_command_is_not_run(spool: Spool) -> None:
    spool.record_command(cmd("old", age=31))
    spool.record_command(cmd("new"))
    lamp = MockDevice()
    run_all(executor(spool, lamp, ttl=30))
    assert lamp.calls == [("new", "on")]
    old = outcomes(spool)[0]
    assert (old["id"], old["status"]) == ("old", "expired")


def test_unknown_device_and_action_fail_without_reaching_anything(spool: Spool) -> None:
    spool.record_command(cmd("a", device="garage"))
    spool.record_command(cmd("b", action="explode"))
    lamp = MockDevice()
    run_all(executor(spool, lamp))
    assert lamp.calls == []
    a, b = outcomes(spool)
    assert (a["status"], a["error"]) == ("failed", "unknown device 'garage'")
    assert b["status"] == "failed" and "no action 'explode'" in b["error"]


def test_unreachable_device_is_retried_in_place(spool: Spool) -> None:
    lamp = MockDevice(in_turn(*[DeviceUnavailable("refused")] * 3, None, None))
    spool.record_command(cmd("first"))
    spool.record_command(cmd("second"))
    ex = executor(spool, lamp)
    steps = run_all(ex)
    assert steps.count(Step.RETRY) == 3
    assert lamp.calls == [("first", "on")] * 4 + [("second", "on")]  # nothing overtook it
    assert [e["status"] for e in outcomes(spool)] == ["ok", "ok"]


def test_retry_waits_for_its_time(spool: Spool) -> None:
    lamp = MockDevice(in_turn(DeviceUnavailable("refused"), None))
    spool.record_command(cmd("c"))
    ex = executor(spool, lamp)
    assert ex.step(0.0) is Step.RETRY
    assert ex.step(0.0) is Step.WAIT and len(lamp.calls) == 1


def test_unreachable_until_ttl_expires(spool: Spool) -> None:
    lamp = MockDevice(in_turn(*[DeviceUnavailable("refused")] * 50))
    spool.record_command(cmd("c"))
    run_all(executor(spool, lamp, ttl=10))
    [out] = outcomes(spool)
    assert out["status"] == "expired" and "unreachable" in out["error"]
    assert 1 < len(lamp.calls) < 10


def test_toggle_is_never_retried(spool: Spool) -> None:
    lamp = MockDevice(in_turn(DeviceUnavailable("refused")))
    spool.record_command(cmd("t", "toggle"))
    run_all(executor(spool, lamp))
    assert lamp.calls == [("t", "toggle")]
    assert outcomes(spool)[0]["status"] == "failed"


def test_device_error_fails_and_is_not_retried(spool: Spool) -> None:
    lamp = MockDevice(in_turn(DeviceError("HTTP 500 from heater")))
    spool.record_command(cmd("c"))
    run_all(executor(spool, lamp))
    assert lamp.calls == [("c", "on")]
    assert outcomes(spool)[0]["error"] == "HTTP 500 from heater"


def test_driver_bug_fails_the_command_once(spool: Spool) -> None:
    lamp = MockDevice(in_turn(KeyError("oops")))
    spool.record_command(cmd("c"))
    run_all(executor(spool, lamp))
    assert lamp.calls == [("c", "on")]
    assert outcomes(spool)[0]["status"] == "failed"


def test_running_command_found_at_start_is_interrupted(spool: Spool) -> None:
    spool.record_command(cmd("was-running"))
    spool.start_command("was-running")  # the agent died while the device ran it
    spool.record_command(cmd("next"))
    lamp = MockDevice()
    ex = executor(spool, lamp)
    ex.recover()
    run_all(ex)
    assert lamp.calls == [("next", "on")]
    first, second = outcomes(spool)
    assert (first["id"], first["status"]) == ("was-running", "interrupted")
    assert (second["id"], second["status"]) == ("next", "ok")


def test_outcome_callbacks(spool: Spool) -> None:
    lamp = MockDevice()
    spool.record_command(cmd("c"))
    ex = executor(spool, lamp)
    seen: list[tuple[str, str | None]] = []
    ex.on_outcome("c", lambda status, error: seen.append((status, error)))
    run_all(ex)
    ex.on_outcome("c", lambda status, error: seen.append((status, error)))  # already done
    assert seen == [("ok", None), ("ok", None)]


def test_ttl_counts_from_the_monotonic_receive_time(spool: Spool) -> None:
    """A wall clock set back by a year (a Pi at boot) must not make a new command old."""
    spool.record_command(cmd("c", age=10_000_000))
    lamp = MockDevice()
    ex = executor(spool, lamp)
    ex.arrivals.mark("c")
    run_all(ex)
    assert lamp.calls == [("c", "on")]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"on", ("on", {})),
        (b'{"action": "pulse", "args": {"ms": 300}, "id": "x-1"}', ("pulse", {"ms": 300})),
        (b'"off"', ("off", {})),
    ],
)
def test_command_payloads(payload: bytes, expected: tuple[str, dict[str, Any]]) -> None:
    c = Command.parse(payload, device="garage", source="mqtt", received_at=WALL)
    assert (c.action, c.args) == expected
    assert c.device == "garage" and c.id


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"rm -rf /",
        b'{"action": "on", "shell": "x"}',
        b'{"action": 5}',
        b"[1]",
        b'{"action": "on", "id": "../x"}',
        b'{"action": "on", "args": [1]}',
        b"on; reboot",
    ],
)
def test_bad_commands_are_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        Command.parse(payload, device="garage", source="mqtt", received_at=WALL)


def test_bad_device_names_are_refused() -> None:
    for device in ("a/#", "../x", '"; rm -rf', "", "+"):
        with pytest.raises(ValueError):
            Command.parse(b"on", device=device, source="mqtt", received_at=WALL)
    assert json.dumps(Command.parse(b"on", device="lamp-2", source="x", received_at=0).args) == "{}"


def test_a_failing_spool_is_one_line_not_a_traceback_per_try(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full or read-only disk is no bug: the executor says so once and keeps trying."""
    device = MockDevice()
    ex = CommandExecutor(
        spool, {"lamp": device}, node="n", ttl_s=30, timeout_s=5,
        backoff=Backoff(0.01, 1.0, 0.01), rng=random.Random(1),
    )  # fmt: skip
    spool.record_command(cmd("c1"))
    real, failures = spool.next_command, [3]

    def failing() -> Command | None:
        if failures[0]:
            failures[0] -= 1
            raise SpoolError("spool write failed: no space left on the disk holding x")
        return real()

    monkeypatch.setattr(spool, "next_command", failing)
    ex.start()
    try:
        wait_until(lambda: device.calls, 5, "the command to run")
    finally:
        ex.stop()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "no space left" in errors[0].getMessage()
