"""The HTTP sink in isolation, at httpx's own seam (MockTransport): what it sends, and how
each answer maps to transient or permanent."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from relay.config import HttpSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.sinks.http import HttpSink

Handler = Callable[[httpx.Request], httpx.Response]
MakeSink = Callable[..., HttpSink]


@pytest.fixture
def sink() -> Iterator[MakeSink]:
    """``sink(handler, **config)``: an HttpSink on ``httpx.MockTransport(handler)``; every one
    made is closed at the end of the test (each has a deadline thread and a client)."""
    made: list[HttpSink] = []

    def make(handler: Handler, **cfg: object) -> HttpSink:
        config = HttpSinkConfig.model_validate(
            {"name": "cloud", "type": "http", "url": "https://hooks.example.com/relay", **cfg}
        )
        made.append(HttpSink(config, transport=httpx.MockTransport(handler)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def ev(n: int) -> Event:
    return Event.new(node="hall-pi", source="mqtt", name="home/hall/door", payload={"n": n})


def test_posts_the_event_json_with_its_headers(sink: MakeSink) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    e = ev(1)
    s = sink(handler, token=SecretStr("t0ken"), headers={"X-Home": "hall"})
    s.send([e])
    s.close()
    [r] = seen
    assert r.method == "POST" and str(r.url) == "https://hooks.example.com/relay"
    assert r.content == e.to_json()
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Idempotency-Key"] == e.id
    assert r.headers["Authorization"] == "Bearer t0ken"
    assert r.headers["X-Home"] == "hall"


def test_batch_is_a_json_array_with_a_stable_key(sink: MakeSink) -> None:
    seen: list[httpx.Request] = []
    s = sink(lambda r: seen.append(r) or httpx.Response(200))  # type: ignore[func-returns-value]
    batch = [ev(i) for i in range(3)]
    s.send(batch)
    s.send(batch)
    s.send(batch[:2])
    assert json.loads(seen[0].content) == [json.loads(e.to_json()) for e in batch]
    assert seen[0].headers["Idempotency-Key"] == seen[1].headers["Idempotency-Key"]
    assert seen[0].headers["Idempotency-Key"] != seen[2].headers["Idempotency-Key"]


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_success(sink: MakeSink, status: int) -> None:
    """Taken: send returns (the forwarder acks), after one request, not retried in the sink."""
    answered: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        answered.append(status)
        return httpx.Response(status)

    assert sink(handler).send([ev(0)]) is None  # type: ignore[func-returns-value]
    assert answered == [status]


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_transient_statuses(sink: MakeSink, status: int) -> None:
    with pytest.raises(TransientError, match=f"HTTP {status} from hooks.example.com"):
        sink(lambda r: httpx.Response(status, text="busy")).send([ev(0)])


@pytest.mark.parametrize("status", [301, 302, 304, 400, 401, 403, 404, 409, 410, 413, 422])
def test_permanent_statuses_keep_a_body_excerpt(sink: MakeSink, status: int) -> None:
    body = "field 'payload' is bad " + "x" * 1000
    with pytest.raises(PermanentError) as info:
        sink(lambda r: httpx.Response(status, text=body)).send([ev(0)])
    message = str(info.value)
    assert message.startswith(f"HTTP {status} from hooks.example.com: field 'payload' is bad")
    assert len(message) < 400


def test_retry_after_seconds_and_date(sink: MakeSink) -> None:
    with pytest.raises(TransientError) as info:
        sink(lambda r: httpx.Response(429, headers={"Retry-After": "2"})).send([ev(0)])
    assert info.value.retry_after == 2.0
    import time

    date = formatdate(time.time() + 30, usegmt=True)
    with pytest.raises(TransientError) as info:
        sink(lambda r: httpx.Response(503, headers={"Retry-After": date})).send([ev(0)])
    assert info.value.retry_after is not None and 25 < info.value.retry_after <= 30


def test_connection_errors_are_transient(sink: MakeSink) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(TransientError, match=r"cannot reach hooks\.example\.com: .*refused"):
        sink(refuse).send([ev(0)])

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out")

    with pytest.raises(TransientError, match=r"cannot reach hooks\.example\.com: .*timed out"):
        sink(unreachable).send([ev(0)])


@pytest.mark.parametrize("timeout", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout])
def test_httpx_timeouts_say_what_the_deadline_says(
    sink: MakeSink, timeout: type[httpx.TimeoutException]
) -> None:
    """httpx's per-operation timeout equals timeout_s and can fire a hair before relay's
    total deadline when the first read hangs: the message is the deadline's either way (the
    partition test matches on it)."""

    def slow(request: httpx.Request) -> httpx.Response:
        raise timeout("timed out")

    with pytest.raises(TransientError, match=r"no complete answer from hooks\.example\.com"):
        sink(slow).send([ev(0)])


def test_token_from_file(sink: MakeSink, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    seen: list[httpx.Request] = []
    s = sink(lambda r: seen.append(r) or httpx.Response(200), token_file=str(tmp_path / "token"))  # type: ignore[func-returns-value]
    s.send([ev(0)])
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
