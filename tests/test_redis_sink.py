"""The Redis Streams sink: its config, and the real agent and spool against the real Redis on
127.0.0.1:6379 (one fresh stream key per test, deleted after), plus private ``redis-server``
instances for the tests that restart a server or put it in a passing state (replica, over
maxmemory, busy with a script)."""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from relay import config
from relay.config import RedisSinkConfig
from relay.errors import PermanentError, TransientError
from relay.event import Event
from relay.metrics.prometheus import PrometheusMetrics
from relay.sinks.redis import RedisSink
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent, spool_of
from tests.helpers.brokers import REDIS_SERVER, PrivateRedis, binary_missing, free_port
from tests.helpers.common import RELAY, REQUIRE_BROKERS, need_service, read_until, sink_status
from tests.helpers.wait import wait_until

REDIS = "redis://127.0.0.1:6379/0"
FAST_RETRY = {"retry_initial": "50ms", "retry_max": "500ms"}


def sink_config(url: str, stream: str, **keys: object) -> str:
    """The "work" sink to ``stream`` at ``url``, retrying fast unless ``keys`` say otherwise."""
    return toml.redis_sink(url, stream, **{**FAST_RETRY, **keys})


def put(spool: Spool, n: int, start: int = 0) -> list[str]:
    events = [
        Event.new(node="test-node", source="test", name="door opened", payload={"n": start + i})
        for i in range(n)
    ]
    spool.put_many(events)
    return [e.id for e in events]


def entries(client: redis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(stream)]


def check_delivery(found: list[dict[bytes, bytes]], ids: list[str]) -> int:
    """Every event is in the stream, in spool order by first appearance, each entry's ``id``
    field its event's id; returns the number of duplicates."""
    assert all(json.loads(f[b"event"])["id"] == f[b"id"].decode() for f in found)
    first: dict[str, None] = {}
    for f in found:
        first.setdefault(f[b"id"].decode())
    assert list(first) == ids, f"{len(set(ids) - set(first))} missing, or out of order"
    return len(found) - len(ids)


def depth(agent: Any) -> int:
    return int(spool_of(agent).stats().sinks[0].depth)


@pytest.fixture
def shared() -> Iterator[redis.Redis]:
    need_service("Redis", 6379)
    with redis.Redis.from_url(REDIS) as client:
        yield client


@pytest.fixture
def stream(shared: redis.Redis) -> Iterator[str]:
    """A stream key of this test's own on the shared Redis, deleted at the end."""
    key = f"relay-test:{uuid.uuid4().hex[:10]}"
    yield key
    shared.delete(key)


@pytest.fixture
def private(tmp_path: Path) -> Iterator[PrivateRedis]:
    reason = binary_missing(REDIS_SERVER)
    if reason:
        if REQUIRE_BROKERS:
            pytest.fail(reason)
        pytest.skip(reason)
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


# ------------------------------------------------------------------ config


def test_password_file_replaces_the_password_and_is_masked(tmp_path: Path) -> None:
    secret = tmp_path / "redis.pw"
    secret.write_text("p@ss:w/rd\n")
    cfg = RedisSinkConfig.model_validate(
        {
            "name": "work",
            "type": "redis",
            "url": "rediss://relay:old@redis.lan:6380/2",
            "password_file": str(secret),
            "stream": "s",
        }
    )
    assert cfg.url.get_secret_value() == "rediss://relay:p%40ss%3Aw%2Frd@redis.lan:6380/2"
    settings = config.Settings(node="n", sinks=[cfg])
    assert config.dump(settings)["sinks"][0]["url"] == "rediss://relay:***@redis.lan:6380/2"
    # No user (Redis's "default" user): the password alone.
    no_user = RedisSinkConfig.model_validate(
        {
            "name": "w",
            "type": "redis",
            "url": "redis://h/0",
            "password_file": str(secret),
            "stream": "s",
        }
    )
    assert no_user.url.get_secret_value() == "redis://:p%40ss%3Aw%2Frd@h/0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "http://h/"}, "expected a redis:// or rediss:// URL"),
        ({"url": "redis://h/events"}, "database number"),
        ({"stream": ""}, "at least 1 character"),
        ({"maxlen": 0}, "greater than or equal to 1"),
        ({"ca_file": "/etc/ca.pem"}, "ca_file is for rediss://"),
    ],
)
def test_bad_config_is_refused(fields: dict[str, Any], message: str) -> None:
    data = {"name": "w", "type": "redis", "url": "redis://:hunter2@h/0", "stream": "s", **fields}
    with pytest.raises(ValidationError, match=message) as info:
        RedisSinkConfig.model_validate(data)
    assert "hunter2" not in str(info.value.errors(include_input=False))


# ------------------------------------------------------------------ delivery


@pytest.mark.broker
def test_2000_events_arrive_once_each_in_order(
    shared: redis.Redis, stream: str, write_config: Callable[..., Path]
) -> None:
    cfg = write_config(sink_config(REDIS, stream))
    with running_agent(cfg) as agent:
        ids: list[str] = []
        for i in range(0, 2000, 100):  # a stream, while the forwarder drains
            ids += put(spool_of(agent), 100, start=i)
        wait_until(lambda: depth(agent) == 0, 20, "the spool to drain")
    found = entries(shared, stream)
    assert len(found) == 2000 and check_delivery(found, ids) == 0
    assert [json.loads(f[b"event"])["payload"]["n"] for f in found] == list(range(2000))
    assert set(found[0]) == {b"id", b"event"}


@pytest.mark.broker
def test_the_event_field_is_the_http_body(shared: redis.Redis, stream: str) -> None:
    """``event`` holds the same bytes the HTTP sink POSTs for one event: the spooled JSON."""
    event = Event.new(node="n", source="mqtt", name="home/hall/door", payload={"ü": [1, None]})
    sink = RedisSink(RedisSinkConfig(name="w", type="redis", url=REDIS, stream=stream))
    try:
        sink.send([event])
    finally:
        sink.close()
    [fields] = entries(shared, stream)
    assert fields == {b"id": event.id.encode(), b"event": event.to_json()}


@pytest.mark.broker
def test_window_of_one(shared: redis.Redis, stream: str, write_config: Callable[..., Path]) -> None:
    cfg = write_config(sink_config(REDIS, stream, window=1))
    with running_agent(cfg) as agent:
        ids = put(spool_of(agent), 200)
        wait_until(lambda: depth(agent) == 0, 20, "the spool to drain")
    assert check_delivery(entries(shared, stream), ids) == 0


@pytest.mark.broker
def test_maxlen_trims_approximately(shared: redis.Redis, stream: str) -> None:
    sink = RedisSink(RedisSinkConfig(name="w", type="redis", url=REDIS, stream=stream, maxlen=100))
    events = [Event.new(node="n", source="test", name="x", payload=i) for i in range(1000)]
    try:
        for i in range(0, 1000, 100):
            sink.send(events[i : i + 100])
    finally:
        sink.close()
    # "~": Redis trims whole nodes of the stream only, so it keeps at least maxlen.
    assert 100 <= shared.xlen(stream) < 1000
    assert entries(shared, stream)[-1][b"id"] == events[-1].id.encode()


# ------------------------------------------------------------------ refusals


@pytest.mark.broker
def test_wrongtype_is_dead_lettered_with_the_reason_and_the_next_events_flow(
    shared: redis.Redis, stream: str, write_config: Callable[..., Path]
) -> None:
    shared.set(stream, "not a stream")  # someone else's key, of another type
    cfg = write_config(sink_config(REDIS, stream, max_retries=0))
    with running_agent(cfg) as agent:
        spool = spool_of(agent)
        refused = put(spool, 3)
        wait_until(lambda: len(spool.dead_letters()) == 3, 10, "three dead letters")
        dead = spool.dead_letters()
        assert [d.event_id for d in dead] == refused
        assert dead[0].reason.startswith(
            f"Redis at 127.0.0.1:6379 refused XADD to '{stream}': WRONGTYPE Operation against "
            "a key holding the wrong kind of value"
        )
        shared.delete(stream)  # the operator moves the other key away
        ids = put(spool, 5, start=3)
        wait_until(lambda: depth(agent) == 0, 10, "the next events")
        assert check_delivery(entries(shared, stream), ids) == 0
        spool.redeliver()  # relay dlq retry
        wait_until(lambda: depth(agent) == 0 and not spool.dead_letters(), 10, "the replay")
    assert check_delivery(entries(shared, stream), ids + refused) == 0


@pytest.mark.broker
def test_wrong_password_is_transient_and_never_shown(
    shared: redis.Redis,
    stream: str,
    write_config: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay")
    cfg = write_config(sink_config("redis://:s3cret-do-not-log@127.0.0.1:6379/0", stream))
    with running_agent(cfg) as agent:
        spool = spool_of(agent)
        put(spool, 3)
        wait_until(lambda: spool.stats().sinks[0].attempts >= 2, 10, "two attempts")
        [sink] = spool.stats().sinks
        assert not spool.dead_letters() and sink.depth == 3  # they wait for a good password
    assert sink.last_error is not None
    assert sink.last_error.startswith("Redis at 127.0.0.1:6379 refused our credentials: ")
    assert "s3cret" not in caplog.text and "s3cret" not in sink.last_error


def _busy(client: redis.Redis, started: threading.Event, ended: list[BaseException]) -> None:
    started.set()
    try:
        client.eval("while true do end", 0)
    except redis.ResponseError as exc:  # SCRIPT KILL ends it with an error
        ended.append(exc)


@pytest.mark.broker
def test_passing_server_states_are_transient(private: PrivateRedis) -> None:
    """READONLY (a replica after a failover), OOM (over maxmemory) and BUSY (a long script),
    from a real server: retried, never dead-lettered; the sink goes on once they pass."""
    sink = RedisSink(RedisSinkConfig(name="w", type="redis", url=private.url, stream="s"))
    admin = redis.Redis.from_url(private.url)
    other = redis.Redis.from_url(private.url)
    events = [Event.new(node="n", source="test", name="x", payload=i) for i in range(3)]
    try:
        admin.replicaof("127.0.0.1", free_port())  # a master that is not there
        with pytest.raises(TransientError, match="READONLY You can't write against a read"):
            sink.send(events)
        admin.replicaof("NO", "ONE")
        admin.config_set("maxmemory", 1)  # the default policy, noeviction, refuses writes
        with pytest.raises(TransientError, match="OOM command not allowed when used memory"):
            sink.send(events)
        admin.config_set("maxmemory", 0)
        admin.config_set("busy-reply-threshold", 10)  # ms before others get BUSY
        started, ended = threading.Event(), []
        script = threading.Thread(target=_busy, args=(other, started, ended))
        script.start()
        started.wait()
        time.sleep(0.1)
        with pytest.raises(TransientError, match="BUSY Redis is busy running a script"):
            sink.send(events)
        admin.script_kill()
        script.join()
        assert ended
        sink.send(events)
        assert [f[b"id"] for f in entries(admin, "s")] == [e.id.encode() for e in events]
    finally:
        sink.close()
        admin.close()
        other.close()


@pytest.mark.broker
def test_password_file_authenticates(private: PrivateRedis, tmp_path: Path) -> None:
    secret = tmp_path / "redis.pw"
    secret.write_text("p@ss:w/rd\n")
    with redis.Redis.from_url(private.url) as admin:
        admin.config_set("requirepass", "p@ss:w/rd")
    cfg = RedisSinkConfig.model_validate(
        {
            "name": "w",
            "type": "redis",
            "url": private.url,
            "password_file": str(secret),
            "stream": "s",
        }
    )
    sink = RedisSink(cfg)
    try:
        sink.send([Event.new(node="n", source="test", name="x")])
    finally:
        sink.close()
    with redis.Redis.from_url(cfg.url.get_secret_value()) as client:
        assert client.xlen("s") == 1


def test_a_dead_server_is_transient() -> None:
    sink = RedisSink(
        RedisSinkConfig(
            name="w", type="redis", url=f"redis://127.0.0.1:{free_port()}/0", stream="s"
        )
    )
    try:
        with pytest.raises(TransientError, match=r"cannot reach Redis at 127\.0\.0\.1:\d+: "):
            sink.send([Event.new(node="n", source="test", name="x")])
    finally:
        sink.close()


@pytest.mark.broker
def test_a_window_refused_part_way_counts_what_went_in(shared: redis.Redis, stream: str) -> None:
    """``delivered`` is exact when Redis refuses a window part way: a stream two IDs short of
    the last possible one takes two entries, then refuses the rest."""
    shared.xadd(stream, {"x": "1"}, id=f"{2**64 - 1}-{2**64 - 3}")
    sink = RedisSink(RedisSinkConfig(name="w", type="redis", url=REDIS, stream=stream))
    events = [Event.new(node="n", source="test", name="x", payload=i) for i in range(5)]
    try:
        with pytest.raises(PermanentError, match="ERR The stream has exhausted") as info:
            sink.send(events)
    finally:
        sink.close()
    assert info.value.delivered == 2
    assert [f[b"id"] for f in entries(shared, stream)[1:]] == [e.id.encode() for e in events[:2]]


# ------------------------------------------------------------------ restart and kill -9


@pytest.mark.broker
def test_redis_restart_mid_stream_loses_nothing(
    private: PrivateRedis, write_config: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    cfg = write_config(sink_config(private.url, "events", timeout_s=2))
    ids: list[str] = []
    stop = threading.Event()
    with running_agent(cfg) as agent:
        spool = spool_of(agent)

        def stream() -> None:
            while not stop.is_set():
                ids.extend(put(spool, 20, len(ids)))
                time.sleep(0.01)

        pusher = threading.Thread(target=stream)
        pusher.start()
        try:
            wait_until(lambda: spool.stats().sinks[0].delivered >= 500, 20, "a first delivery")
            private.restart()  # SIGTERM: Redis writes its append-only file and exits
            time.sleep(0.3)  # the stream goes on a little after the server is back
        finally:
            stop.set()
            pusher.join()
        wait_until(lambda: depth(agent) == 0, 30, "the drain after the restart")
    with redis.Redis.from_url(private.url) as client:
        duplicates = check_delivery(entries(client, "events"), ids)
    logs = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    assert any("cannot reach Redis" in m for m in logs), logs  # the outage was met
    assert len([m for m in logs if "connected to Redis" in m]) == 2, logs
    print(f"Redis restart: {len(ids)} events, {duplicates} duplicates")


@pytest.mark.broker
def test_kill_9_during_the_drain_loses_nothing(
    shared: redis.Redis,
    stream: str,
    write_config: Callable[..., Path],
    state_dir: Path,
    relay_env: dict[str, str],
) -> None:
    cfg = write_config(sink_config(REDIS, stream))
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["work"])
        ids = [i for start in range(0, 2000, 500) for i in put(spool, 500, start)]
    rng = random.Random()
    argv = [*RELAY, "run", "--config", str(cfg)]
    for _ in range(3):  # kill -9 at a random moment of the drain, three times
        with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=relay_env) as proc:
            read_until(proc, "connected to Redis")
            time.sleep(rng.uniform(0, 0.01))
            proc.kill()
            proc.wait()
    # The kills came mid-drain: entries were added (the log line follows the first window),
    # and events are left to deliver.
    left, added = sink_status(relay_env, cfg)["depth"], shared.xlen(stream)
    assert left > 0 and added > 0
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=relay_env) as proc:
        read_until(proc, "relay started")
        wait_until(lambda: sink_status(relay_env, cfg)["depth"] == 0, 30, "the final drain")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    duplicates = check_delivery(entries(shared, stream), ids)
    print(f"3 kills in 2,000 events ({added} added, {left} left): {duplicates} duplicates")


# ------------------------------------------------------------------ the README's worker


def readme_worker() -> dict[str, Any]:
    """The worker of the README's "Redis Streams sink" section, run as a module."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("\n## Redis Streams sink\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "readme_worker"}
    exec(compile(code, "README.md (the Redis worker)", "exec"), namespace)
    return namespace


@pytest.mark.broker
def test_the_readme_worker_acks_retries_and_dead_letters(shared: redis.Redis, stream: str) -> None:
    worker = readme_worker()
    worker.update(STREAM=stream, DEAD=f"{stream}:dead", STUCK_MS=20)
    done: list[str] = []
    failed: list[str] = []

    def handle(event: dict[str, Any]) -> None:
        if event["payload"] == 1:
            failed.append(event["id"])
            raise ValueError("this one never works")
        done.append(event["id"])

    worker["handle"] = handle
    events = [Event.new(node="n", source="test", name="x", payload=i) for i in range(3)]
    sink = RedisSink(RedisSinkConfig(name="w", type="redis", url=REDIS, stream=stream))
    try:
        worker["setup"]()
        sink.send(events)
        worker["step"]("pi-1", block_ms=10)
        for _ in range(8):
            time.sleep(0.03)  # past STUCK_MS
            worker["step"]("pi-1", block_ms=1)
        dead = entries(shared, f"{stream}:dead")
        pending = shared.xpending(stream, "workers")["pending"]
    finally:
        sink.close()
        worker["r"].close()
        shared.delete(f"{stream}:dead")
    assert done == [events[0].id, events[2].id]
    assert failed == [events[1].id] * (1 + worker["MAX_RETRIES"])
    assert [d[b"id"] for d in dead] == [events[1].id.encode()]
    assert pending == 0


@pytest.mark.broker
def test_a_reconnect_is_counted_in_the_metrics(private: PrivateRedis, tmp_path: Path) -> None:
    """relay_reconnects_total{connection="w"}: 0 after the first connection, 1 once the
    sink is through again after the server was gone."""
    with Spool.open(tmp_path / "spool") as spool:
        metrics = PrometheusMetrics(spool, node="n", sinks=["w"], connections=["w"])

        def reconnects() -> float | None:
            return metrics.registry.get_sample_value("relay_reconnects_total", {"connection": "w"})

        cfg = RedisSinkConfig(name="w", type="redis", url=private.url, stream="s", timeout_s=2)
        sink = RedisSink(cfg, metrics=metrics)
        events = [Event.new(node="n", source="test", name="x", payload=i) for i in range(3)]
        try:
            assert reconnects() == 0
            sink.send(events)
            assert reconnects() == 0  # the first connection is no reconnect
            private.stop()
            with pytest.raises(TransientError, match="cannot reach Redis"):
                sink.send(events)
            private.start()
            sink.send(events)
            assert reconnects() == 1
        finally:
            sink.close()
