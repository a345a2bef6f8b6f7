"""The HTTP sink end to end: the real agent, a real spool, a real HTTP server on loopback."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import relay
from relay.event import Event
from tests.helpers import toml
from tests.helpers.agent import running_agent, spool_of
from tests.helpers.common import RELAY
from tests.helpers.http_server import Received, RemoteServer, Reply
from tests.helpers.wait import wait_until

FAST_RETRY = {"retry_initial": "50ms", "retry_max": "500ms"}


def sink_config(url: str, **keys: object) -> str:
    """The "cloud" sink at ``url``, retrying fast unless ``keys`` say otherwise."""
    return toml.http_sink(url, **{**FAST_RETRY, **keys})


@pytest.fixture
def remote() -> Iterator[RemoteServer]:
    with RemoteServer() as server:
        yield server


def push_all(cfg: Path, n: int, name: str = "door opened") -> list[str]:
    return [relay.push(name, {"n": i}, config_path=cfg).id for i in range(n)]


def ns(events: list[dict[str, object]]) -> list[object]:
    return [e["payload"]["n"] for e in events]  # type: ignore[index]


def test_200_delivers_each_event_once_in_order(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    cfg = write_config(sink_config(remote.url))
    with running_agent(cfg) as agent:
        ids = push_all(cfg, 20)
        wait_until(lambda: len(remote.accepted()) == 20, 10, "20 deliveries")
        wait_until(lambda: spool_of(agent).stats().sinks[0].depth == 0, 5, "acks")
    assert [e["id"] for e in remote.accepted()] == ids
    assert [r.headers["Idempotency-Key"] for r in remote.received] == ids
    assert remote.received[0].headers["Content-Type"] == "application/json"
    event = remote.accepted()[0]
    assert set(event) == {"id", "node", "source", "name", "time", "payload"}
    assert (event["node"], event["source"], event["name"]) == ("test-node", "push", "door opened")


def test_500_then_200(remote: RemoteServer, write_config: Callable[..., Path]) -> None:
    remote.respond = lambda r, n: Reply(500 if n < 2 else 200)
    cfg = write_config(sink_config(remote.url))
    with running_agent(cfg):
        [event_id] = push_all(cfg, 1)
        wait_until(lambda: len(remote.accepted()) == 1, 10)
    assert [r.status for r in remote.received] == [500, 500, 200]
    assert {r.headers["Idempotency-Key"] for r in remote.received} == {event_id}


def test_429_retry_after_is_waited_out(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    remote.respond = lambda r, n: Reply(429, {"Retry-After": "2"}) if n == 0 else Reply(200)
    cfg = write_config(sink_config(remote.url, retry_max="10s"))
    with running_agent(cfg):
        push_all(cfg, 1)
        wait_until(lambda: len(remote.accepted()) == 1, 10)
    first, second = remote.received
    assert second.at - first.at >= 2.0


def test_hanging_server_times_out_and_is_retried(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    remote.respond = lambda r, n: Reply(hang=True) if n == 0 else Reply(200)
    cfg = write_config(sink_config(remote.url, timeout_s=1))
    with running_agent(cfg) as agent:
        pushed = time.monotonic()
        push_all(cfg, 2)
        wait_until(lambda: len(remote.accepted()) == 2, 15)
        assert "within 1s" in (spool_of(agent).stats().sinks[0].last_error or "")
    assert ns(remote.accepted()) == [0, 1]
    # The deadline runs from when relay began the first request, which the server only sees
    # once the body has arrived (a few ms later under load), so measure from the push, which
    # came before both.
    assert remote.received[1].at - pushed >= 1.0


def test_deadline_holds_against_a_trickling_server(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    # One byte every 0.3 s: each read arrives well within the timeout, the whole answer
    # would take ~20 s. The total deadline of 1 s must cut it off.
    remote.respond = lambda r, n: Reply(200, trickle=0.3) if n == 0 else Reply(200)
    cfg = write_config(sink_config(remote.url, timeout_s=1))
    with running_agent(cfg):
        pushed = time.monotonic()
        push_all(cfg, 1)
        wait_until(lambda: len(remote.received) >= 2, 15, "a retry after the deadline")
        wait_until(lambda: remote.received[-1].status == 200, 5)
    gap = remote.received[1].at - pushed  # from before the deadline began (see above)
    assert 1.0 <= gap < 10.0, f"retry came {gap:.1f}s after the trickle began"


def test_connection_refused_then_up(write_config: Callable[..., Path]) -> None:
    with socket.socket() as s:  # a port nobody listens on, for now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(sink_config(f"http://127.0.0.1:{port}/events"))
    with running_agent(cfg) as agent:
        push_all(cfg, 5)
        wait_until(lambda: spool_of(agent).stats().sinks[0].attempts >= 2, 10, "failed attempts")
        assert "refused" in (spool_of(agent).stats().sinks[0].last_error or "")
        time.sleep(3)  # the outage lasts 3 s; the retries keep failing meanwhile
        with RemoteServer(port=port) as server:
            wait_until(lambda: len(server.accepted()) == 5, 10)
            assert ns(server.accepted()) == [0, 1, 2, 3, 4]


def test_400_is_dead_lettered_and_the_rest_keep_flowing(
    remote: RemoteServer, write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    refuse = {"on": True}

    def respond(r: Received, n: int) -> Reply:
        if refuse["on"] and r.events[0]["payload"]["n"] == 1:
            return Reply(400, body=b'{"error": "payload.n must be even"}')
        return Reply(200)

    remote.respond = respond
    cfg = write_config(sink_config(remote.url, max_retries=2))
    relay_env["RELAY_CONFIG"] = str(cfg)
    with running_agent(cfg):
        ids = push_all(cfg, 4)
        wait_until(lambda: len(remote.accepted()) == 3, 10)
        assert ns(remote.accepted()) == [0, 2, 3]
        assert sum(1 for r in remote.received if r.status == 400) == 3  # 1 try + 2 retries

        listed = subprocess.run(
            [*RELAY, "dlq", "list"], capture_output=True, text=True, env=relay_env, check=True
        ).stdout
        assert ids[1] in listed and "HTTP 400" in listed and "must be even" in listed
        status = json.loads(
            subprocess.run(
                [*RELAY, "status", "--json"],
                capture_output=True,
                text=True,
                env=relay_env,
                check=True,
            ).stdout
        )
        assert status["sinks"][0]["dead_letters"] == 1

        refuse["on"] = False  # the receiver was fixed
        subprocess.run(
            [*RELAY, "dlq", "retry", ids[1]], env=relay_env, check=True, capture_output=True
        )
        wait_until(lambda: len(remote.accepted()) == 4, 10, "the replay")
    assert remote.accepted()[-1]["id"] == ids[1]


def test_seed_scenario_flaky_remote(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    """10 "door opened" events, a remote that fails half the requests at random."""
    rng = random.Random()
    remote.respond = lambda r, n: Reply(503 if rng.random() < 0.5 else 200)
    cfg = write_config(sink_config(remote.url))
    with running_agent(cfg):
        ids = push_all(cfg, 10)
        wait_until(lambda: len(remote.accepted()) == 10, 30, "all 10 delivered")
    assert [e["id"] for e in remote.accepted()] == ids  # all, once each, in order
    for r in remote.received:  # every retry of an event carries that event's key
        assert r.headers["Idempotency-Key"] == r.events[0]["id"]
    print(f"{len(remote.received)} requests for 10 events")


def test_batches_catch_up_after_an_outage(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    down = {"on": True}
    remote.respond = lambda r, n: Reply(503 if down["on"] else 200)
    cfg = write_config(sink_config(remote.url, batch_max=50))
    with running_agent(cfg):
        push_all(cfg, 120)
        wait_until(lambda: len(remote.received) >= 2, 10)
        down["on"] = False
        wait_until(lambda: len(remote.accepted()) == 120, 10)
    assert ns(remote.accepted()) == list(range(120))
    ok = [r for r in remote.received if r.status == 200]
    assert len(ok) <= 4 and max(len(r.events) for r in ok) == 50


def test_push_reaches_the_sink_without_polling(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    """relay push from another process wakes the agent's forwarder through the doorbell."""
    cfg = write_config(sink_config(remote.url))
    with running_agent(cfg):
        time.sleep(0.5)  # the forwarder is idle, waiting with no timeout
        latencies = []
        for i in range(5):
            started = time.monotonic()
            subprocess.run(
                [*RELAY, "push", f"e{i}", "--config", str(cfg)], check=True, capture_output=True
            )
            returned = time.monotonic()
            wait_until(lambda i=i: len(remote.accepted()) == i + 1, 5, "delivery")
            latencies.append(remote.received[-1].at - returned)
            assert remote.received[-1].at > started
    print(
        "push -> delivered after relay push returned: "
        + ", ".join(f"{1000 * x:.1f} ms" for x in latencies)
    )
    assert max(latencies) < 1.0  # a timer-driven forwarder would wait indefinitely here


def test_dead_letter_reason_names_the_status_and_body(
    remote: RemoteServer, write_config: Callable[..., Path]
) -> None:
    remote.respond = lambda r, n: Reply(422, body=b"unknown device")
    cfg = write_config(sink_config(remote.url, max_retries=0))
    with running_agent(cfg) as agent:
        push_all(cfg, 1)
        wait_until(lambda: bool(spool_of(agent).dead_letters()), 10)
        [dl] = spool_of(agent).dead_letters()
    assert dl.reason.startswith("HTTP 422 from 127.0.0.1:") and "unknown device" in dl.reason
    assert Event.from_json(dl.body).payload == {"n": 0}


@pytest.mark.parametrize("bad", [[0], [10], [19], [3, 15]], ids=["first", "middle", "last", "two"])
def test_a_refused_event_is_found_by_halves(
    remote: RemoteServer, write_config: Callable[..., Path], bad: list[int]
) -> None:
    """A receiver that refuses (400) any request holding a malformed event: the refused
    ones are dead-lettered, every other event of the batch is delivered once, in order,
    and the search costs a few requests, not one per event."""

    def respond(request: Received, count: int) -> Reply:
        return Reply(400) if {e["payload"]["n"] for e in request.events} & set(bad) else Reply(200)

    remote.respond = respond
    cfg = write_config(sink_config(remote.url, batch_max=20, max_retries=1))
    push_all(cfg, 20)  # a backlog before the agent starts: one batch of 20
    with running_agent(cfg) as agent:
        wait_until(lambda: len(spool_of(agent).dead_letters()) == len(bad), 20, "dead letters")
        wait_until(lambda: len(remote.accepted()) == 20 - len(bad), 10, "the others")
        dead = [json.loads(d.body)["payload"]["n"] for d in spool_of(agent).dead_letters()]
    assert ns(remote.accepted()) == [n for n in range(20) if n not in bad]
    assert len(remote.received[0].events) == 20
    assert len(remote.received) <= len(bad) * (2 * 5 + 1 + 1) + 1  # log2(20) < 5
    assert sorted(dead) == bad
