"""The agent as systemd runs it: `relay run` in its own process, a datagram socket as
NOTIFY_SOCKET. End-to-end latency, idle CPU, memory, start-up time, bytes written to disk.

    .venv/bin/python tests/bench/agent_bench.py [--rate 50] [--seconds 10] [--idle 60]
        [--backlog 1000000] [--burst 10000] [--wear-rates 1,10,50] [--wear-seconds 60]
        [--json]

The agent reads a private Mosquitto on a free port (MQTT source, QoS 1) and posts to an
HTTP receiver in its own process (receiver.py). Each figure sits beside a baseline from
the same run where one means something:

- MQTT -> HTTP latency: QoS 1 publishes at ``--rate`` carrying their CLOCK_MONOTONIC time,
  against a plain paho -> httpx bridge with no spool (mqtt_clients.py bridge);
- start-up (fork+exec to READY=1) and RSS: against a Python process that only sends READY=1;
- RSS and start-up with a ``--backlog`` queued (filled with the Spool API, the sink at a
  closed port so that nothing drains): against the same agent on an empty spool;
- bytes written to storage per event (/proc/<pid>/io write_bytes, the SD card's wear) as
  events flow at each of ``--wear-rates`` for ``--wear-seconds`` and in a burst of
  ``--burst``: with the defaults, with ``commit_interval = "1s"`` and with durability
  "normal", against the size of the event's JSON (the ratio is the write amplification);
- the agent's CPU per event at 10/s (utime + stime over the 10/s flow, defaults): against
  the plain paho -> httpx bridge at the same rate;
- idle CPU ticks and wake-ups over ``--idle`` seconds: no baseline, 0 is the goal;
- kill -9 to the MQTT session resumed: from exec to relay's "subscribed" line (the broker
  delivers what it queued from then on), after a kill -9, on an empty spool and with
  ``--resume-backlog`` queued: against exec to READY=1 on an empty spool.

Prints one table (``--json``: the rows of tests/bench/run_all's table instead).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[2]))
from agent_proc import TICKS_PER_S, Launched, cpu_ticks, launched, status_kb, wakeups, write_bytes
from http_bench import ReceiverProcess, free_port
from summary import Row, emit, row, table

from relay.event import Event
from relay.spool import Spool
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.mqtt import Publisher
from tests.helpers.wait import wait_until

HERE = Path(__file__).parent
SCRIPT = Path(sys.executable).with_name("relay")  # the console script, as systemd runs it
RELAY = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "relay"]
# The least a Type=notify service in Python does: start the interpreter, send READY=1.
NOTIFY_ONLY = [
    sys.executable,
    "-c",
    "import os, socket, time\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n"
    "time.sleep(3600)\n",
]
STARTS = 3  # start-up time: the median of this many


@dataclass
class Wear:
    per_event: dict[float, float]  # bytes written per event at each rate
    burst: float  # the same in a burst
    cpu_ms: float | None  # CPU per event at 10/s


# The spool settings whose wear the bench shows: [spool]'s lines.
WEAR_CONFIGS = {
    "defaults": "",
    'commit_interval "1s"': 'commit_interval = "1s"\n',
    'durability "normal"': 'durability = "normal"\n',
}


@dataclass
class Bench:
    tmp: Path
    broker: PrivateMosquitto
    rx: ReceiverProcess

    def config(self, url: str, spool: str = "", state: Path | None = None) -> Path:
        """A config (on a fresh state dir unless ``state``): MQTT source bench/# (QoS 1),
        one HTTP sink "cloud" at ``url``; ``spool``: lines for ``[spool]``."""
        name = uuid.uuid4().hex[:8]
        path = self.tmp / f"relay-{name}.toml"
        path.write_text(
            f'node = "bench"\nstate_dir = "{state or self.tmp / name}"\nlog_level = "warning"\n'
            f'[spool]\n{spool}max_size = "4GB"\n'
            f'[mqtt]\nhost = "{self.broker.host}"\nport = {self.broker.port}\n'
            f'client_id = "relay-bench-{name}"\n'
            '[[sources]]\ntype = "mqtt"\ntopics = ["bench/#"]\nqos = 1\n'
            f'[[sinks]]\nname = "cloud"\ntype = "http"\nurl = "{url}"\n'
        )
        path.chmod(0o640)
        return path

    def closed_url(self) -> str:
        return f"http://127.0.0.1:{free_port()}/events"  # nothing listens there

    def received(self, what: str) -> Any:
        return self.rx.client.get(f"http://127.0.0.1:{self.rx.port}/{what}").json()

    @contextmanager
    def agent(self, cfg: Path) -> Iterator[Launched]:
        with launched("relay", [*RELAY, "run", "--config", str(cfg)], self.tmp) as agent:
            yield agent

    # ------------------------------------------------------------ MQTT -> HTTP flows

    def warm_up(self, pub: Publisher, topic: str) -> None:
        """Publish until one message comes through (subscribed, HTTP connection open)."""
        self.rx.reset()

        def arrived() -> bool:  # or else publish another
            if self.rx.arrivals():
                return True
            pub.publish(topic, json.dumps({"warm-up": True}))
            return False

        wait_until(arrived, 60, "a warm-up message at the receiver", interval=0.2)
        time.sleep(0.5)  # let the stragglers of the warm-up arrive before the reset
        self.rx.reset()

    def flow(self, pub: Publisher, topic: str, n: int, rate: float | None) -> list[float]:
        """Publish ``n`` QoS 1 messages (at ``rate`` per second, or as fast as the broker
        acknowledges), wait for all at the receiver; their latencies in ms."""
        mids = []
        next_at = time.monotonic()
        for i in range(n):
            if rate:
                next_at += 1 / rate
                time.sleep(max(next_at - time.monotonic(), 0))
            mids.append(pub.publish(topic, json.dumps({"n": i, "sent": time.monotonic()})))
        pub.wait(mids, timeout=120)
        wait_until(
            lambda: self.received("count") >= n,
            120,
            f"all {n} events at the receiver",
            interval=0.1,
        )
        pairs = self.received("latencies")
        return [1000 * (arrived - sent) for sent, arrived in pairs]

    def relay_latencies(self, rate: float, seconds: float) -> list[float]:
        """Latencies at ``rate`` with the defaults."""
        with (
            self.agent(self.config(self.rx.url)),
            Publisher(self.broker.host, self.broker.port) as pub,
        ):
            self.warm_up(pub, "bench/flow")
            return self.flow(pub, "bench/flow", int(rate * seconds), rate)

    def wear(self, spool: str, rates: list[float], seconds: float, burst: int) -> Wear:
        """Bytes written per event at each of ``rates`` (``seconds`` each, 20 events at the
        least) and in a burst, with ``spool`` as ``[spool]``'s lines; CPU ms per event at
        10/s if 10 is among the rates."""
        wear = Wear({}, 0.0, None)
        with (
            self.agent(self.config(self.rx.url, spool)) as agent,
            Publisher(self.broker.host, self.broker.port) as pub,
        ):
            self.warm_up(pub, "bench/flow")
            for rate in [*rates, None]:
                n = max(int(rate * seconds), 20) if rate else burst
                self.rx.reset()
                written, ticks = write_bytes(agent.pid), cpu_ticks(agent.pid)
                self.flow(pub, "bench/flow", n, rate)
                time.sleep(1.5)  # the acks of the last events wait up to 1 s for their commit
                per_event = (write_bytes(agent.pid) - written) / n
                if rate is None:
                    wear.burst = per_event
                    continue
                wear.per_event[rate] = per_event
                if rate == 10:
                    wear.cpu_ms = 1000 * (cpu_ticks(agent.pid) - ticks) / TICKS_PER_S / n
        return wear

    def bridge_flow(self, rate: float, n: int) -> tuple[list[float], float]:
        """The plain paho -> httpx bridge: latencies of ``n`` events at ``rate``, and its
        CPU ms per event."""
        bridge = subprocess.Popen(
            [sys.executable, str(HERE / "mqtt_clients.py"), "bridge", self.broker.host,
             str(self.broker.port), "bench/bridge", self.rx.url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert bridge.stdout is not None and bridge.stdout.readline().strip() == "ready"
            with Publisher(self.broker.host, self.broker.port) as pub:
                self.warm_up(pub, "bench/bridge")
                ticks = cpu_ticks(bridge.pid)
                latencies = self.flow(pub, "bench/bridge", n, rate)
                return latencies, 1000 * (cpu_ticks(bridge.pid) - ticks) / TICKS_PER_S / n
        finally:
            bridge.communicate(timeout=30)  # closes its stdin: it stops

    # ------------------------------------------------------------ start-up, idle, memory

    def startups(self) -> tuple[float, float, float]:
        """Median start-up of relay and of NOTIFY_ONLY, in s; NOTIFY_ONLY's RSS in MB."""
        relay, floor, rss = [], [], 0.0
        for _ in range(STARTS):
            with self.agent(self.config(self.closed_url())) as agent:
                relay.append(agent.startup_s)
            with launched("notify-only", NOTIFY_ONLY, self.tmp) as bare:
                floor.append(bare.startup_s)
                time.sleep(0.2)
                rss = status_kb(bare.pid, "VmRSS") / 1024
        return statistics.median(relay), statistics.median(floor), rss

    def idle(self, seconds: float) -> tuple[int, int, float, float]:
        """CPU ticks and wake-ups of an idle agent over ``seconds``; then its RSS and peak."""
        with self.agent(self.config(self.closed_url())) as agent:
            time.sleep(2)  # let start-up settle (MQTT connect, first STATUS=)
            ticks, woke = cpu_ticks(agent.pid), wakeups(agent.pid)
            time.sleep(seconds)
            ticks, woke = cpu_ticks(agent.pid) - ticks, wakeups(agent.pid) - woke
            rss, peak = status_kb(agent.pid, "VmRSS"), status_kb(agent.pid, "VmHWM")
        return ticks, woke, rss / 1024, peak / 1024

    def resume(self, n: int) -> float:
        """Median seconds from exec to the MQTT session resumed, after a kill -9, with
        ``n`` events queued (a sink at a closed port keeps them there)."""
        state = self.tmp / f"resume-{n}"
        self.fill(state, n)
        cfg = self.config(self.closed_url(), state=state)
        cfg.write_text(cfg.read_text().replace('log_level = "warning"', 'log_level = "info"'))
        self.until_subscribed(cfg).kill()  # the session and the subscription memo
        times = []
        for _ in range(STARTS):
            began = time.monotonic()
            proc = self.until_subscribed(cfg)
            times.append(time.monotonic() - began)
            proc.kill()  # kill -9: what a power cut or a crash leaves
            proc.wait()
        return statistics.median(times)

    def until_subscribed(self, cfg: Path) -> subprocess.Popen[bytes]:
        """``relay run`` on ``cfg``, returned once it logged its MQTT subscriptions."""
        log = self.tmp / f"resume-{uuid.uuid4().hex[:8]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*RELAY, "run", "--config", str(cfg)], stdout=out, stderr=out,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while b"mqtt: subscribed" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"relay did not subscribe: {log.read_text()[-2000:]}")
            time.sleep(0.002)
        return proc

    def fill(self, state: Path, n: int) -> None:
        """A spool at ``state`` with ``n`` events queued for the sink "cloud"."""
        with Spool.open(state, durability="normal", max_bytes=4_000_000_000) as spool:
            spool.register_sinks(["cloud"])
            for i in range(0, n, 1000):
                spool.put_many(
                    [
                        Event.new(node="bench", source="mqtt", name="bench/flow", payload={"n": j})
                        for j in range(i, min(i + 1000, n))
                    ]
                )

    def backlog(self, n: int) -> tuple[float, float, float]:
        """Start-up time, RSS and peak RSS (MB) of an agent with ``n`` events queued."""
        state = self.tmp / "backlog"
        self.fill(state, n)
        with self.agent(self.config(self.closed_url(), state=state)) as agent:
            time.sleep(5)  # the forwarder leases the head, fails, backs off
            rss, peak = status_kb(agent.pid, "VmRSS"), status_kb(agent.pid, "VmHWM")
        return agent.startup_s, rss / 1024, peak / 1024


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[round(p * (len(ordered) - 1))]


def measure(args: argparse.Namespace) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="relay-agent-bench-") as d:
        tmp = Path(d)
        rx = ReceiverProcess()
        try:
            with PrivateMosquitto(tmp / "broker", extra="max_queued_messages 10000000\n") as mq:
                return run(Bench(tmp, mq, rx), args)
        finally:
            rx.close()


def run(bench: Bench, args: argparse.Namespace) -> list[Row]:
    rate, seconds, burst = args.rate, args.seconds, args.burst
    startup, floor, floor_rss = bench.startups()
    ticks, woke, rss, peak = bench.idle(args.idle)
    latencies = bench.relay_latencies(rate, seconds)
    bridge, _ = bench.bridge_flow(rate, int(rate * seconds))
    wear_rates = [float(r) for r in args.wear_rates.split(",")]
    wear = {
        name: bench.wear(lines, wear_rates, args.wear_seconds, burst)
        for name, lines in WEAR_CONFIGS.items()
    }
    cpu = wear["defaults"].cpu_ms
    bridge_cpu = bench.bridge_flow(10, max(int(10 * args.wear_seconds), 20))[1]
    payload = {"n": burst // 2, "sent": time.monotonic()}  # what flow() publishes
    size = float(
        len(Event.new(node="bench", source="mqtt", name="bench/flow", payload=payload).to_json())
    )
    at = f"MQTT -> HTTP latency at {rate:g}/s"
    bare = "python sending READY=1"
    rows = [
        row(f"{at}, p50", "ms", percentile(latencies, 0.5), percentile(bridge, 0.5), "paho->httpx"),
        row(
            f"{at}, p99", "ms", percentile(latencies, 0.99), percentile(bridge, 0.99), "paho->httpx"
        ),
        row(f"idle CPU over {args.idle:g} s", "ticks", ticks),
        row(f"idle wake-ups over {args.idle:g} s (WatchdogSec=30)", "switches", woke),
        row("RSS idle", "MB", rss, floor_rss, bare),
        row("peak RSS (VmHWM) idle", "MB", peak, floor_rss, bare),
    ]
    startup_rows = [row("start-up, exec to READY=1", "ms", 1000 * startup, 1000 * floor, bare)]
    if args.backlog:
        q = f"{args.backlog:,} queued"
        backlog_startup, backlog_rss, backlog_peak = bench.backlog(args.backlog)
        rows += [
            row(f"RSS, {q}", "MB", backlog_rss, rss, "RSS idle, empty spool"),
            row(f"peak RSS (VmHWM), {q}", "MB", backlog_peak, peak, "idle, empty spool"),
        ]
        startup_rows.append(
            row(f"start-up, {q}", "ms", 1000 * backlog_startup, 1000 * startup, "empty spool")
        )
    rows += startup_rows
    kill = "kill -9 to MQTT session resumed"
    empty = bench.resume(0)
    rows.append(row(f"{kill}, empty spool", "ms", 1000 * empty, 1000 * startup, "READY=1, empty"))
    if args.resume_backlog:
        queued = bench.resume(args.resume_backlog)
        rows.append(
            row(
                f"{kill}, {args.resume_backlog:,} queued", "ms", 1000 * queued, 1000 * empty,
                "resumed, empty spool",
            )
        )  # fmt: skip
    for name, w in wear.items():
        rows += [
            row(f"disk writes, {r:g}/s, {name}", "B/event", b, size, "event JSON")
            for r, b in w.per_event.items()
        ]
        rows.append(
            row(f"disk writes, burst of {burst:,}, {name}", "B/event", w.burst, size, "event JSON")
        )
    if cpu is not None:
        rows.append(row("CPU per event at 10/s", "ms", cpu, bridge_cpu, "paho->httpx at 10/s"))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=50, help="events/s of the latency run")
    p.add_argument("--seconds", type=float, default=10, help="length of the latency run")
    p.add_argument("--idle", type=float, default=60, help="seconds of the idle measurement")
    p.add_argument("--backlog", type=int, default=1_000_000, help="0: skip that figure")
    p.add_argument("--burst", type=int, default=10_000, help="events of the disk-write burst")
    p.add_argument("--wear-rates", default="1,10,50", help="events/s of the disk-write flows")
    p.add_argument("--wear-seconds", type=float, default=60, help="length of each such flow")
    p.add_argument(
        "--resume-backlog", type=int, default=100_000, help="events queued at the kill -9 (0: skip)"
    )
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    rows = measure(args)
    if args.json:
        emit(rows)
        return
    print(f"\nagent benchmark: `relay run` under a stand-in for systemd, {TICKS_PER_S} ticks/s\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
