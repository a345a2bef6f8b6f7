"""Prometheus metrics: after a known run the endpoint's counters match it exactly; without
``[metrics]`` relay opens no port (and does not import prometheus-client); a bad ``listen``
is one line naming the key; a port already taken stops relay with one line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import relay
from relay import config
from relay.errors import ConfigError, SpoolFull
from relay.event import Event
from relay.metrics.prometheus import UNKNOWN_DEVICE, PrometheusMetrics
from relay.spool import Spool
from relay.spool.model import Tallies
from tests.helpers import toml
from tests.helpers.brokers import PrivateMosquitto, free_port
from tests.helpers.common import RELAY
from tests.helpers.http_server import Received, RemoteServer, Reply
from tests.helpers.mqtt import Publisher, unique
from tests.helpers.wait import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample the endpoint serves, parsed by prometheus-client's own parser."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on: its socket inodes, looked up in /proc/<pid>/net/tcp*."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def relay_run(cfg: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`relay run` as a real process, once it logged "relay started"; SIGTERM at the end
    (it must then exit 0). Yields the process and its stderr lines so far."""
    lines: list[str] = []
    with subprocess.Popen(
        [*RELAY, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stderr is not None
        threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True).start()
        try:
            wait_until(
                lambda: any("relay started" in line for line in lines) or proc.poll() is not None,
                30,
                "relay started",
            )
            assert proc.poll() is None, "".join(lines)
            yield proc, lines
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, "".join(lines)


# ------------------------------------------------------------------ a known run, scraped


@pytest.mark.broker
def test_counters_match_a_known_run(
    tmp_path: Path, write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    """Events pushed from another process before and during the run, MQTT messages, one
    refused at the door, a sink that fails its first 3 sends and refuses one event for good,
    a broker restart: every counter says exactly that."""
    failing = [3]  # the first three sends of a good event are answered 503
    lock = threading.Lock()

    def respond(request: Received, count: int) -> Reply:
        if request.events[0]["name"] == "poison":
            return Reply(400)  # permanent: max_retries = 1, so dead on the second refusal
        with lock:
            if failing[0]:
                failing[0] -= 1
                return Reply(503)
        return Reply(200)

    port, topic = free_port(), unique("metrics/")
    with (
        PrivateMosquitto(tmp_path / "mosquitto") as broker,
        RemoteServer(respond) as remote,
    ):
        cfg = write_config(
            toml.metrics(f"127.0.0.1:{port}"),
            toml.mqtt(broker.port, client_id=unique()),
            toml.mqtt_source(f"{topic}/#", max_payload="1KiB"),
            toml.http_sink(remote.url, max_retries=1, retry_initial="10ms", retry_max="50ms"),
        )
        # Written into the spool file by this process, as `relay push` does, agent stopped.
        for name in ("before 1", "poison", "before 2"):
            relay.push(name, config_path=cfg)
        with relay_run(cfg, relay_env) as (proc, lines), Publisher(port=broker.port) as pub:
            wait_until(lambda: any("mqtt: subscribed" in line for line in lines), 10, "subscribed")
            mids = [pub.publish(f"{topic}/{n}", json.dumps({"n": n})) for n in range(3)]
            mids.append(pub.publish(f"{topic}/big", b"x" * 2000))  # over max_payload
            relay.push("during", config_path=cfg)  # the agent is woken through its doorbell
            pub.wait(mids)
            wait_until(lambda: len(remote.accepted()) == 6, 20, "6 events delivered")
            wait_until(
                lambda: value(scrape(port), "relay_events_dead_lettered_total", sink="cloud") == 1,
                10,
                "the poison event dead-lettered",
            )
            first = scrape(port)

            broker.restart()  # everything above is acked: nothing comes twice
            wait_until(
                lambda: value(scrape(port), "relay_reconnects_total", connection="mqtt") == 1,
                20,
                "the MQTT reconnect",
            )
            pub.wait([pub.publish(f"{topic}/after", "1")], timeout=20)  # paho reconnects too
            wait_until(lambda: len(remote.accepted()) == 7, 20, "the 7th event delivered")
            wait_until(
                lambda: value(scrape(port), "relay_events_delivered_total", sink="cloud") == 7,
                10,
            )
            last = scrape(port)
            assert listening_ports(proc.pid) == {port}

    # Stored in the spool, by source, whichever process stored them.
    assert value(first, "relay_events_ingested_total", source="push") == 4
    assert value(first, "relay_events_ingested_total", source="mqtt") == 3
    assert value(first, "relay_events_rejected_total", source="mqtt") == 1
    # What the forwarder did: 3 transient failures and 1 permanent one retried; 6 + 3 + 2
    # requests, each one timed.
    assert value(first, "relay_events_delivered_total", sink="cloud") == 6
    assert value(first, "relay_send_retries_total", sink="cloud") == 4
    assert value(first, "relay_events_dead_lettered_total", sink="cloud") == 1
    assert value(first, "relay_send_duration_seconds_count", sink="cloud") == 11
    assert value(first, "relay_dead_letters", sink="cloud") == 1
    assert value(first, "relay_spool_pending_events", sink="cloud") == 0
    assert value(first, "relay_spool_oldest_event_age_seconds", sink="cloud") == 0
    assert value(first, "relay_reconnects_total", connection="mqtt") == 0
    assert value(first, "relay_info", node="test-node", version=relay.__version__) == 1
    assert (value(first, "process_resident_memory_bytes") or 0) > 0
    assert not [name for name, _ in first if name.endswith("_created")]

    assert value(last, "relay_events_ingested_total", source="mqtt") == 4
    assert value(last, "relay_events_delivered_total", sink="cloud") == 7
    assert value(last, "relay_send_duration_seconds_count", sink="cloud") == len(remote.received)
    assert len(remote.received) == 12
    assert value(last, "relay_reconnects_total", connection="mqtt") == 1
    assert value(last, "relay_spool_pending_events", sink="cloud") == 0


def test_an_idle_agent_serving_metrics_does_not_wake_up(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    """P7 with the endpoint on: its thread sleeps in select() until a scrape comes (the
    library's serve_forever() would wake twice a second)."""
    port = free_port()
    cfg = write_config(toml.metrics(f"127.0.0.1:{port}"))
    with relay_run(cfg, relay_env) as (proc, _):
        scrape(port)
        time.sleep(0.5)  # the scrape's thread ends
        before = _switches(proc.pid)
        time.sleep(3)
        switches = _switches(proc.pid) - before
    assert switches <= 2, f"{switches} wake-ups in 3 s: something polls"


def _switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


# ------------------------------------------------------------------ off by default


def test_without_metrics_no_port_is_opened(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    with RemoteServer() as remote:
        cfg = write_config(toml.http_sink(remote.url))
        with relay_run(cfg, relay_env) as (proc, _):
            relay.push("hello", config_path=cfg)
            wait_until(lambda: len(remote.accepted()) == 1, 10, "the event delivered")
            assert listening_ports(proc.pid) == set()


def test_without_metrics_prometheus_client_is_not_imported() -> None:
    code = (
        "import sys, relay.cli, relay.agent, relay.wiring, relay.forwarder, relay.commands, "
        "relay.sources.mqtt, relay.sinks.amqp; print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "False"


def test_a_port_in_use_stops_relay_with_one_line(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write_config(toml.metrics(f"127.0.0.1:{port}"))
        done = subprocess.run(
            [*RELAY, "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            env=relay_env,
            timeout=30,
            check=False,
        )
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if "metrics" in line]
    assert f"metrics: cannot listen on 127.0.0.1:{port} ([metrics] listen)" in line
    assert line.endswith("Address already in use")
    assert "Traceback" not in done.stderr
    assert "relay started" not in done.stderr


# ------------------------------------------------------------------ the [metrics] table


@pytest.mark.parametrize(
    "listen",
    [
        "10.9.8.7",  # no port
        ":9100",  # no host: say "0.0.0.0" to mean every interface
        "10.9.8.7:0",
        "10.9.8.7:65536",
        "10.9.8.7:http",
        "fe80::1:9100",  # IPv6 without brackets
        "[nope]:9100",
        "300.1.2.3:9100",
        "bad host:9100",
    ],
)
def test_a_bad_listen_is_one_line_naming_the_key(
    write_config: Callable[..., Path], listen: str
) -> None:
    path = write_config(toml.metrics(listen))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    [line] = info.value.problems
    assert line.startswith(f"{path}: metrics.listen: ")
    assert listen not in line


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("localhost:9100", ("localhost", 9100)),
        ("pi-4.home.arpa:9464", ("pi-4.home.arpa", 9464)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_listen_values(listen: str, address: tuple[str, int]) -> None:
    assert config.MetricsConfig(listen=listen).address == address


def test_metrics_are_off_by_default_and_the_example_says_so() -> None:
    assert config.Settings().metrics.address is None
    example = config.load(Path(__file__).parent.parent / "etc" / "relay.toml")
    assert example.metrics.listen == ""


# ------------------------------------------------------------------ the pieces


def _event(source: str, size: int = 10) -> Event:
    return Event.new(node="n", source=source, name="e", payload="x" * size)


def test_the_spool_counts_what_it_stored_by_source(tmp_path: Path) -> None:
    """In the file, in the commit that stores the events: refused ones are not counted, any
    source relay does not know is "other", and the counts outlive the process."""
    with Spool.open(tmp_path, max_bytes=4000) as spool:
        spool.register_sinks(["cloud"])
        spool.put(_event("mqtt"))
        spool.put_many([_event("push"), _event("push")])
        spool.put(_event("zigbee2mqtt"))
        with pytest.raises(SpoolFull):
            spool.put(_event("push", size=5000))
        spool.reject_async("@ingest", _event("mqtt"), "too large", lambda error: None)
        spool.sync()
    with Spool.open(tmp_path) as spool:
        assert spool.tallies() == Tallies({"mqtt": 1, "push": 2, "other": 1}, {"mqtt": 1})


def test_labels_stay_bounded_and_reconnects_start_after_the_first(tmp_path: Path) -> None:
    with Spool.open(tmp_path) as spool:
        spool.register_sinks(["cloud"])
        metrics = PrometheusMetrics(
            spool, node="n", sinks=["cloud"], devices=["lamp"], connections=["bus"]
        )
        get = metrics.registry.get_sample_value
        # Configured labels show from the start, at 0.
        assert get("relay_events_delivered_total", {"sink": "cloud"}) == 0
        assert get("relay_commands_total", {"device": "lamp", "outcome": "expired"}) == 0
        assert get("relay_reconnects_total", {"connection": "bus"}) == 0
        for _ in range(3):
            metrics.connected("mqtt")
        assert get("relay_reconnects_total", {"connection": "mqtt"}) == 2
        metrics.command("lamp", "ok")
        metrics.command("a/#", "failed")  # a device name from a topic, not in the config
        assert get("relay_commands_total", {"device": "lamp", "outcome": "ok"}) == 1
        assert get("relay_commands_total", {"device": UNKNOWN_DEVICE, "outcome": "failed"}) == 1
        assert get("relay_commands_total", {"device": "a/#", "outcome": "failed"}) is None
        with metrics.sending("cloud"):
            pass
        assert get("relay_send_duration_seconds_count", {"sink": "cloud"}) == 1
        spool.put(_event("gpio"))
        assert get("relay_events_ingested_total", {"source": "gpio"}) == 1
        assert get("relay_spool_pending_events", {"sink": "cloud"}) == 1
