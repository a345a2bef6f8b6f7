"""Wall-clock jumps (issue 7/9): a day forward, a day back, and to 1970, as a Pi without a
real-time clock sees at boot and when NTP steps the time.

``time-machine`` moves the wall clock of this whole process (``time.time``, ``datetime``,
every thread; not ``time.monotonic``) while relay's real threads run: a forwarder retrying
a failing sink, the command executor retrying an unreachable device, the HTTP sink's
request deadline. Their delays must not change: relay measures them on the monotonic clock.

Where relay reads the wall clock on purpose, the tests below pin down what a jump does:

- an event's ``time`` and id, and the spool's ``spooled_at``: what the clock said. Ids stay
  unique and increase within a process even when the clock goes back; order is the spool's
  sequence, never a time;
- ``max_age``: the wall-clock age of the spooled event (the only clock that survives a
  restart). A jump forward ages queued events at once: with ``max_age`` set, a failing head
  is dead-lettered (kept, with its reason; ``relay dlq retry`` sends it again), never
  dropped. A jump back delays ``max_age``. Without ``max_age`` (the default) jumps change
  nothing;
- a device command's TTL: counted on the monotonic clock from when this process received
  it. A command recorded by another process (``relay command``) or before a restart only
  has its wall-clock ``received_at``; its age is read once from the wall clock, then
  counted on the monotonic one.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine

from relay.backoff import Backoff
from relay.commands import CommandExecutor
from relay.commands import Step as CommandStep
from relay.config import HttpSinkConfig
from relay.errors import DeviceUnavailable, TransientError
from relay.event import Command, Event, new_id
from relay.forwarder import Forwarder, Policy, Step
from relay.report import status_json
from relay.sinks.http import HttpSink
from relay.spool import Spool
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mocks import MockDevice, MockSink, in_turn

DAY = 86_400.0
RETRY = 0.2  # every retry below waits exactly this long (a Retry-After at the backoff cap)


def jumps(now: float) -> list[tuple[str, float]]:
    return [("a day forward", now + DAY), ("a day back", now - DAY), ("1970", 0.0)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    # "normal": no fsync per commit. What is timed here is the pacing of retries on the
    # monotonic clock; each retry's bookkeeping is a commit, and an fsync held up by the other
    # tests' disk traffic (four at once in CI) can stretch a gap past the 1 s bound.
    with Spool.open(tmp_path, durability="normal") as s:
        s.register_sinks(["cloud"])
        yield s


@pytest.fixture
def traveller() -> Iterator[time_machine.Traveller]:
    """The wall clock, ticking, movable with ``move_to``; the real one again afterwards."""
    with time_machine.travel(time.time(), tick=True) as t:
        yield t


def gaps(times: Sequence[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


def failing_sink() -> MockSink:
    """Refuses every batch as a 503 with ``Retry-After: RETRY``; notes when (monotonic)."""
    return MockSink(lambda events: TransientError("HTTP 503", retry_after=RETRY), name="cloud")


def forwarder(spool: Spool, sink: MockSink, max_age: float | None = None) -> Forwarder:
    policy = Policy(max_age=max_age, backoff=Backoff(RETRY, 1.0, RETRY))
    return Forwarder(sink, spool, policy, rng=random.Random(7))


def test_forwarder_retries_keep_their_pace_across_jumps(
    spool: Spool, traveller: time_machine.Traveller
) -> None:
    """If retries were timed on the wall clock, a jump back would park the sink for a day
    (or 56 years) and a jump forward would fire at once; they keep their 0.2 s pace."""
    spool.put(Event.new(node="n", source="test", name="door", payload=1))
    sink = failing_sink()
    f = forwarder(spool, sink)
    f.start()
    try:
        for _, wall in jumps(time.time()):
            time.sleep(0.5)
            traveller.move_to(wall)
        time.sleep(0.5)
    finally:
        f.stop()
    spaced = gaps(sink.attempts)
    # 2 s at one retry per 0.2 s. Wall-clock timing would show as a burst of retries at
    # once (a gap well under 0.2 s) or a stall of a day (no retries at all after a jump);
    # the upper bounds leave room for a loaded machine waking a thread late.
    assert 5 <= len(sink.attempts) <= 12, spaced
    assert all(RETRY - 0.01 <= g <= 1.0 for g in spaced), spaced
    assert spool.dead_letters() == [] and f.alive() is False  # stopped, nothing given up


def test_max_age_is_measured_on_the_wall_clock(
    spool: Spool, traveller: time_machine.Traveller
) -> None:
    """A jump forward past max_age dead-letters the failing head, with its reason (kept,
    replayable); a jump back (even to 1970) only delays it: the event is retried."""
    now = time.time()
    spool.put(Event.new(node="n", source="test", name="door", payload=1))
    sink = failing_sink()
    f = forwarder(spool, sink, max_age=3600)
    assert f.step(time.monotonic()) is Step.RETRY
    for what, wall in [("a day back", now - DAY), ("1970", 0.0)]:
        traveller.move_to(wall)
        assert f.step(f.next_attempt) is Step.RETRY, what
    traveller.move_to(now + DAY)
    assert f.step(f.next_attempt) is Step.DEAD
    [dead] = spool.dead_letters()
    assert "max_age" in dead.reason, dead.reason
    assert spool.redeliver() == 1  # `relay dlq retry`: it is queued again, nothing was lost


def test_without_max_age_a_jump_gives_up_nothing(
    spool: Spool, traveller: time_machine.Traveller
) -> None:
    spool.put(Event.new(node="n", source="test", name="door", payload=1))
    f = forwarder(spool, failing_sink())
    now = time.time()
    assert f.step(time.monotonic()) is Step.RETRY
    for _, wall in [*jumps(now), ("ten years on", now + 3650 * DAY)]:
        traveller.move_to(wall)
        assert f.step(f.next_attempt) is Step.RETRY
    assert spool.dead_letters() == []


def test_spool_order_ids_and_ages_across_jumps(
    spool: Spool, traveller: time_machine.Traveller
) -> None:
    """Events put while the clock jumps about come out in the order they were put; their
    ids stay unique and increasing in this process (the id counter keeps counting when
    the clock goes back); `relay status` never shows a negative age."""
    now = time.time()
    walls = [now, *(wall for _, wall in jumps(now)), now]
    ids = []
    for i, wall in enumerate(walls):
        traveller.move_to(wall)
        event = Event.new(node="n", source="test", name="door", payload=i)
        ids.append(event.id)
        spool.put(event)
    leased = spool.lease("cloud", 100).records
    assert [r.event.payload for r in leased] == list(range(len(walls)))
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert new_id() > ids[-1]
    assert [r.event.time[:4] for r in leased][3] == "1970"  # the event says what the clock said
    traveller.move_to(0.0)  # status read at 1970, with events "from the future" queued
    ages = status_json(spool.stats())["sinks"][0]
    assert ages["oldest_age_s"] == 0.0


def flaky_lamp(down: int) -> MockDevice:
    """Unreachable for the first ``down`` attempts; notes when (monotonic) each came."""
    refusals = [DeviceUnavailable("connection refused")] * down
    return MockDevice(in_turn(*refusals), name="lamp", actions=("on", "off"), not_retried=())


def executor(spool: Spool, device: MockDevice, ttl_s: float = 30.0) -> CommandExecutor:
    return CommandExecutor(
        spool,
        {"lamp": device},
        node="n",
        ttl_s=ttl_s,
        timeout_s=5,
        backoff=Backoff(RETRY, 1.0, RETRY),
        rng=random.Random(3),
    )


def command(spool: Spool, ex: CommandExecutor | None, received_at: float | None = None) -> str:
    cmd = Command.of(
        id=new_id(),
        device="lamp",
        action="on",
        args={},
        source="test",
        received_at=time.time() if received_at is None else received_at,
    )
    assert spool.record_command(cmd)
    if ex is not None:
        ex.arrivals.mark(cmd.id)  # what the MQTT and AMQP inputs do once it is recorded
    return cmd.id


@pytest.mark.parametrize("jump", ["a day forward", "a day back", "1970"])
def test_command_ttl_ignores_jumps(
    spool: Spool, traveller: time_machine.Traveller, jump: str
) -> None:
    """A command received just now runs, whatever the wall clock did since: its TTL counts
    on the monotonic clock from when this process received it."""
    device = flaky_lamp(down=0)
    ex = executor(spool, device, ttl_s=5)
    cid = command(spool, ex)
    traveller.move_to(dict(jumps(time.time()))[jump])
    assert ex.step(time.monotonic()) is CommandStep.DONE
    assert spool.command_state(cid) == ("done", "ok", None)


def test_unreachable_device_retries_keep_their_pace_across_jumps(
    spool: Spool, traveller: time_machine.Traveller
) -> None:
    device = flaky_lamp(down=6)
    ex = executor(spool, device, ttl_s=30)
    done = threading.Event()
    outcome: list[tuple[str, str | None]] = []
    ex.start()
    try:
        cid = command(spool, ex)

        def ended(status: str, error: str | None) -> None:
            outcome.append((status, error))
            done.set()

        ex.on_outcome(cid, ended)
        for _, wall in jumps(time.time()):
            time.sleep(0.3)
            traveller.move_to(wall)
        assert done.wait(10), "the command did not end"
    finally:
        ex.stop()
    assert outcome == [("ok", None)]
    assert len(device.attempts) == 7
    assert all(g <= 1.0 for g in gaps(device.attempts)), gaps(device.attempts)


def test_command_from_another_process_ages_on_the_wall_clock(
    spool: Spool, traveller: time_machine.Traveller
) -> None:
    """`relay command` records the wall-clock time only: a jump between its recording and
    the executor seeing it counts (forward: expired, not run; back: run). The executor
    normally sees it within milliseconds (the doorbell), so only a jump in that window
    matters."""
    now = time.time()
    device = flaky_lamp(down=0)
    ex = executor(spool, device, ttl_s=30)
    forward = command(spool, None, received_at=now)
    traveller.move_to(now + DAY)
    assert ex.step(time.monotonic()) is CommandStep.DONE
    assert spool.command_state(forward) == ("done", "expired", "older than ttl_s (30s)")
    back = command(spool, None, received_at=now + DAY)
    traveller.move_to(0.0)
    assert ex.step(time.monotonic()) is CommandStep.DONE
    assert spool.command_state(back) == ("done", "ok", None)
    assert len(device.attempts) == 1


@pytest.mark.parametrize("jump", ["a day forward", "a day back", "1970"])
def test_http_sink_deadline_ignores_jumps(traveller: time_machine.Traveller, jump: str) -> None:
    """A request to a server that never answers ends at timeout_s (1 s), not at once when
    the clock jumps forward, and not a day later when it jumps back."""
    with RemoteServer(lambda r, n: Reply(hang=True)) as server:
        sink = HttpSink(HttpSinkConfig(name="cloud", type="http", url=server.url, timeout_s=1))
        event = Event.new(node="n", source="test", name="door", payload=1)
        target = dict(jumps(time.time()))[jump]
        mover = threading.Timer(0.3, traveller.move_to, args=(target,))
        started = time.monotonic()
        mover.start()
        try:
            with pytest.raises(TransientError):
                sink.send([event])
        finally:
            mover.join()
            sink.close()
        took = time.monotonic() - started
    assert 0.9 <= took < 3.0, f"{took:.2f}s for a 1 s timeout after a jump {jump}"


def test_time_machine_moves_the_wall_clock_only(traveller: time_machine.Traveller) -> None:
    """The premise of this file: the wall clock moves, for every thread, and the monotonic
    clock does not."""
    before = time.monotonic()
    traveller.move_to(0.0)
    seen: list[float] = []
    thread = threading.Thread(target=lambda: seen.append(time.time()))
    thread.start()
    thread.join()
    assert seen[0] < 10 and time.time() < 10
    assert 0 <= time.monotonic() - before < 5
    traveller.shift(timedelta(days=1))
    assert DAY <= time.time() < DAY + 10
