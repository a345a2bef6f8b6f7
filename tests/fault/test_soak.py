"""Soak (P7, issue 7/9): a steady 50 events/s over MQTT into ``relay run``, out to an HTTP
sink that refuses 20 % of requests (503), for ``RELAY_SOAK_S`` seconds.

Memory must stay flat: RSS at the end within 5 MB of RSS once warmed up. The issue asks
for 10 minutes against RSS after the first minute (``RELAY_SOAK_S=600``, by hand); CI runs
it for 45 s against RSS after 20 s, which is when the SQLite page caches (2 MB per
connection) and the WAL (checkpointed at ~4 MB) have reached their working size at this
rate. CPU per event comes from /proc/<pid>/stat (user + system) and is printed, never
asserted: timings on a shared machine are noise.

    RELAY_SOAK_S=600 .venv/bin/pytest -q -s tests/fault/test_soak.py
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.harness import (
    AgentProcess,
    Ledger,
    MqttNumbers,
    http_numbers,
    http_sink_part,
    mqtt_part,
)
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.http_server import Received, RemoteServer, Reply
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

SOAK_S = float(os.environ.get("RELAY_SOAK_S", "45"))
WARM_S = 60.0 if SOAK_S >= 120 else 20.0  # RSS is compared with its value at this point
RATE = 50.0  # events per second
FAIL = float(os.environ.get("RELAY_SOAK_FAIL", "0.2"))  # share of requests refused (503)
RSS_SLACK_KB = 5 * 1024


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path / "mosquitto") as b:
        yield b


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class FlakySink:
    """Answers 503 to a random ``FAIL`` share of requests (seeded), 200 to the rest."""

    def __init__(self) -> None:
        self._rng = random.Random(20)
        self._lock = threading.Lock()

    def __call__(self, request: Received, count: int) -> Reply:
        with self._lock:
            refuse = self._rng.random() < FAIL
        return Reply(503) if refuse else Reply(200)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_S + 300)
def test_soak_memory_flat_with_a_flaky_sink(tmp_path: Path, broker: PrivateMosquitto) -> None:
    topic, total = unique("soak/"), int(SOAK_S * RATE)
    with RemoteServer(FlakySink()) as remote:
        agent = AgentProcess(
            tmp_path / "agent",
            mqtt_part(broker.port, topic),
            http_sink_part(remote.url, retry_initial="100ms", retry_max="1s"),
        )
        with agent, MqttNumbers(broker.host, broker.port, topic) as pub:
            agent.start(ready="mqtt: subscribed")
            pid = agent.pid
            assert pid is not None
            cpu0, rss0 = cpu_s(pid), rss_kb(pid)
            started = time.monotonic()
            pub.start(range(total), rate=RATE)
            samples: list[tuple[float, int]] = []  # (seconds in, RSS kB), every second
            while (elapsed := time.monotonic() - started) < SOAK_S:
                samples.append((elapsed, rss_kb(pid)))
                time.sleep(1.0)
            pub.join()
            pub.wait_acked()
            ledger = Ledger(range(total))

            def all_there() -> bool:
                ledger.replace("cloud", http_numbers(remote))
                return ledger.complete("cloud")

            wait_until(all_there, 60, f"all {total} events delivered")
            took = time.monotonic() - started
            (user, system), rss_end = cpu_s(pid), rss_kb(pid)
            user, system = user - cpu0[0], system - cpu0[1]
            assert agent.running, agent.tail()
            requests = len(remote.received)
        report = ledger.check("cloud")  # nothing lost, in order, no replays (no disruption)
    warm = next(rss for at, rss in samples if at >= WARM_S)
    peak = max(rss for _, rss in samples)
    refused = sum(1 for r in remote.received if r.status == 503)
    every = max(len(samples) // 10, 1)
    print(
        f"\nsoak {SOAK_S:.0f}s at {RATE:.0f} events/s, {FAIL:.0%} of requests refused:"
        f" {total} events, {requests} requests ({refused} refused), {report.line()}\n"
        f"RSS: {rss0 / 1024:.1f} MB at start, {warm / 1024:.1f} MB at {WARM_S:.0f}s,"
        f" {rss_end / 1024:.1f} MB at the end ({(rss_end - warm) / 1024:+.2f} MB),"
        f" peak {peak / 1024:.1f} MB; every {every}s: "
        + " ".join(f"{rss / 1024:.1f}" for _, rss in samples[::every])
        + f"\nCPU: {user + system:.2f}s ({user:.2f}s user, {system:.2f}s system) in"
        f" {took:.0f}s ({(user + system) / took:.1%} of one core),"
        f" {1e6 * (user + system) / total:.0f} us per event"
    )
    assert rss_end - warm < RSS_SLACK_KB, f"RSS grew {(rss_end - warm) / 1024:.1f} MB"
    assert requests < 2 * total, f"{requests} requests for {total} events: a retry storm"
