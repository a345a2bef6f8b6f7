"""The HTTP sink with ``max_in_flight``: several requests under way, acked in spool order.
The real agent in-process, a real spool, a real HTTP server on loopback that answers after
a delay. (kill -9 with a full window: tests/fault/test_window_kill.py.)"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.event import Event
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent, spool_of
from tests.helpers.http_server import Received, RemoteServer, Reply
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def remote() -> Iterator[RemoteServer]:
    with RemoteServer() as server:
        yield server


class Concurrency:
    """Counts the requests the server holds at once (wrapping a responder)."""

    def __init__(self, respond: Callable[[Received, int], Reply]) -> None:
        self._respond = respond
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __call__(self, request: Received, n: int) -> Reply:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            reply = self._respond(request, n)
            time.sleep(reply.delay)  # held here, so that it counts as under way
            return Reply(reply.status, reply.headers, reply.body)
        finally:
            with self._lock:
                self.now -= 1


def fill(state_dir: Path, n: int) -> list[str]:
    """``n`` events queued for the sink "cloud" before the agent starts; their ids."""
    events = [
        Event.new(node="test-node", source="push", name="door", payload={"n": i}) for i in range(n)
    ]
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["cloud"])
        spool.put_many(events)
    return [e.id for e in events]


def window_sink(url: str, **keys: object) -> str:
    return toml.http_sink(
        url, **{"max_in_flight": 16, "retry_initial": "50ms", "retry_max": "500ms", **keys}
    )


def n_of(request: Received) -> int:
    [event] = request.events
    return int(event["payload"]["n"])


def first_answers(remote: RemoteServer) -> dict[int, list[int]]:
    """Each event's answers, in the order they were given."""
    seen: dict[int, list[int]] = {}
    for request in remote.received:
        seen.setdefault(n_of(request), []).append(request.status)
    return seen


def test_sixteen_in_flight_keep_up_with_a_remote_100ms_away(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    """One request at a time, a remote 100 ms away takes 10 events/s; 16 at once, 160."""
    held = Concurrency(lambda r, n: Reply(delay=0.1))
    remote.respond = held
    ids = fill(state_dir, 400)
    cfg = write_config(window_sink(remote.url))
    with running_agent(cfg) as agent:
        began = time.monotonic()
        wait_until(lambda: len(remote.accepted()) >= 400, 60, "400 deliveries")
        rate = 400 / (time.monotonic() - began)
        wait_until(lambda: spool_of(agent).stats().sinks[0].depth == 0, 10, "the acks")
    assert held.most == 16
    assert rate >= 100, f"{rate:.0f} events/s with 16 in flight at 100 ms each"
    assert sorted(e["id"] for e in remote.accepted()) == sorted(ids)  # each once
    assert len(remote.received) == 400


def test_requests_say_where_they_stand(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    """Arrival may differ from spool order by up to max_in_flight; Relay-Sequence and
    Relay-Previous put it back in order, every request chained to the one before."""
    remote.respond = Concurrency(lambda r, n: Reply(delay=0.02 * (n % 5)))
    ids = fill(state_dir, 200)
    cfg = write_config(window_sink(remote.url))
    with running_agent(cfg):
        wait_until(lambda: len(remote.accepted()) >= 200, 60, "200 deliveries")
    requests = sorted(remote.received, key=lambda r: int(r.headers["Relay-Sequence"]))
    assert [r.events[0]["id"] for r in requests] == ids  # spool order, restored
    for before, after in itertools.pairwise(requests):
        assert after.headers["Relay-Previous"] == before.headers["Relay-Sequence"]
    arrival = [ids.index(r.events[0]["id"]) for r in remote.received]
    assert max(abs(i - position) for position, i in enumerate(arrival)) < 16


def test_batches_in_flight_list_each_events_place(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    ids = fill(state_dir, 100)
    cfg = write_config(window_sink(remote.url, max_in_flight=4, batch_max=10))
    with running_agent(cfg):
        wait_until(lambda: len(remote.accepted()) >= 100, 30, "100 deliveries")
    previous = None
    for request in sorted(
        remote.received, key=lambda r: int(r.headers["Relay-Sequence"].split(",")[0])
    ):
        seqs = [int(s) for s in request.headers["Relay-Sequence"].split(", ")]
        assert len(seqs) == len(request.events) and seqs == sorted(seqs)
        if previous is not None:
            assert int(request.headers["Relay-Previous"]) == previous
        previous = seqs[-1]
    assert sorted(e["id"] for e in remote.accepted()) == sorted(ids)


def test_a_failure_mid_window_is_retried_alone(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    """Event 20 fails (503) until let through; the events after it that were in flight are
    answered 200 and never sent again; the cursor stays before 20 meanwhile."""
    let_through = threading.Event()

    def respond(request: Received, n: int) -> Reply:
        if n_of(request) == 20 and not let_through.is_set():
            return Reply(503, delay=0.05)
        return Reply(delay=0.05)

    remote.respond = respond
    ids = fill(state_dir, 60)
    cfg = write_config(window_sink(remote.url))
    with running_agent(cfg) as agent:
        spool = spool_of(agent)
        wait_until(lambda: first_answers(remote).get(20, []).count(503) >= 3, 20, "retries")
        lease = spool.lease("cloud", 1)
        assert [r.event.id for r in lease.records] == [ids[20]]  # the cursor stops at it
        later = {n for n, answers in first_answers(remote).items() if n > 20 and 200 in answers}
        assert later, "nothing behind the failed one got through while it failed"
        let_through.set()
        wait_until(lambda: spool.stats().sinks[0].depth == 0, 20, "the rest delivered")
    answers = first_answers(remote)
    assert set(answers) == set(range(60))
    assert answers[20][-1] == 200 and set(answers[20][:-1]) == {503}
    assert all(answers[n] == [200] for n in range(60) if n != 20)  # none of them twice


def test_a_refused_event_mid_window_is_dead_lettered_and_holds_nothing(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    remote.respond = lambda r, n: Reply(400 if n_of(r) == 7 else 200, delay=0.03)
    ids = fill(state_dir, 40)
    cfg = write_config(window_sink(remote.url, max_retries=2))
    with running_agent(cfg) as agent:
        spool = spool_of(agent)
        wait_until(lambda: spool.stats().sinks[0].depth == 0, 20, "all settled")
        [dead] = spool.dead_letters("cloud")
    assert dead.event_id == ids[7] and "HTTP 400" in dead.reason
    answers = first_answers(remote)
    assert answers[7] == [400, 400, 400]  # refused, and again max_retries times
    assert all(answers[n] == [200] for n in range(40) if n != 7)
    # The gap is visible: the request after it names it as the one before.
    eighth = next(r for r in remote.received if n_of(r) == 8)
    seventh = next(r for r in remote.received if n_of(r) == 7)
    assert eighth.headers["Relay-Previous"] == seventh.headers["Relay-Sequence"]


def test_retry_after_holds_the_whole_sink(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    """A 429 with Retry-After: 1 on one request: the requests already under way finish, and
    no new one starts until the second has passed."""

    def respond(request: Received, n: int) -> Reply:
        if n == 30:
            return Reply(429, {"Retry-After": "1"}, delay=0.02)
        return Reply(delay=0.02)

    remote.respond = respond
    fill(state_dir, 80)
    cfg = write_config(window_sink(remote.url, max_in_flight=8, retry_max="10s"))
    with running_agent(cfg) as agent:
        wait_until(lambda: spool_of(agent).stats().sinks[0].depth == 0, 30, "all delivered")
    refused = remote.received[30]
    assert refused.status == 429
    started_during = [
        r for r in remote.received if refused.done_at + 0.05 < r.at < refused.done_at + 0.95
    ]
    assert started_during == [], [n_of(r) for r in started_during]
    assert len(remote.accepted()) == 80


def test_a_stop_with_requests_under_way_keeps_what_got_through(
    remote: RemoteServer, write_config: Callable[..., Path], state_dir: Path
) -> None:
    """SIGTERM with 16 requests under way: they finish, and what they delivered is acked,
    so that the next start sends none of it again."""
    remote.respond = lambda r, n: Reply(delay=0.5)
    fill(state_dir, 100)
    cfg = write_config(window_sink(remote.url))
    with running_agent(cfg):
        wait_until(lambda: len(remote.received) >= 16, 10, "a full window")
    delivered = len(remote.accepted())
    assert delivered >= 16
    with Spool.open(state_dir) as spool:
        assert spool.stats().sinks[0].depth == 100 - delivered
