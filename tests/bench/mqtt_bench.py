"""MQTT ingest benchmark: relay (QoS 1 into the durable spool, PUBACK after the commit)
against a plain paho subscriber that does nothing with the messages, in one run.

    .venv/bin/python tests/bench/mqtt_bench.py [--messages 20000] [--runs 3] [--json]

A private Mosquitto (queue limit raised, so that nothing is dropped) on a free port; the
publisher, the plain subscriber and relay each run in their own process. ``--json`` prints
the row of tests/bench/run_all's table instead of the table.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))
from summary import emit, row

from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.wait import wait_until

HERE = Path(__file__).parent
CLIENTS = [sys.executable, str(HERE / "mqtt_clients.py")]


def start(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finished_at(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    at = float(proc.stdout.readline())
    proc.wait(60)
    return at


def plain(broker: PrivateMosquitto, n: int) -> float:
    sub = start([*CLIENTS, "subscribe", broker.host, str(broker.port), "bench/plain", str(n)])
    pub = start([*CLIENTS, "publish", broker.host, str(broker.port), "bench/plain", str(n)])
    began = time.monotonic()
    pub.stdin.write("go\n")  # type: ignore[union-attr]
    pub.stdin.flush()  # type: ignore[union-attr]
    finished_at(pub)
    return n / (finished_at(sub) - began)


def spooled(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            # Not count(*): that walks the whole table, every 10 ms, on the cores relay is
            # measured on (no sink deletes rows here, so the last seq is the count).
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def relay(broker: PrivateMosquitto, n: int, tmp: Path) -> float:
    cfg = tmp / "relay.toml"
    cfg.write_text(
        f'node = "bench"\nstate_dir = "{tmp / "state"}"\nlog_level = "warning"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "relay-bench"\n'
        '[[sources]]\ntype = "mqtt"\ntopics = ["bench/relay"]\nqos = 1\n'
    )
    agent = subprocess.Popen([sys.executable, "-m", "relay", "run", "--config", str(cfg)])
    try:
        db = tmp / "state" / "spool.db"
        wait_until(db.exists, 60, "the spool file", interval=0.05)
        time.sleep(1.0)  # connected and subscribed
        pub = start([*CLIENTS, "publish", broker.host, str(broker.port), "bench/relay", str(n)])
        began = time.monotonic()
        pub.stdin.write("go\n")  # type: ignore[union-attr]
        pub.stdin.flush()  # type: ignore[union-attr]
        wait_until(lambda: spooled(db) >= n, 600, f"{n} events spooled")
        elapsed = time.monotonic() - began
        finished_at(pub)
        return n / elapsed
    finally:
        agent.terminate()
        agent.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3, help="report the run with the median ratio")
    p.add_argument("--json", action="store_true", help="print run_all's row as JSON")
    args = p.parse_args()
    pairs = []  # (relay, plain) of one run each: both share that run's machine weather
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            with PrivateMosquitto(tmp / "broker", extra="max_queued_messages 10000000\n") as b:
                ceiling = plain(b, args.messages)
                pairs.append((relay(b, args.messages, tmp), ceiling))
    pairs.sort(key=lambda pair: pair[0] / pair[1])
    ingest, ceiling = pairs[len(pairs) // 2]
    ratios = ", ".join(f"{r / c:.2f}" for r, c in pairs)
    if args.json:
        emit(
            [row("MQTT ingest, QoS 1, PUBACK after fsync", "msg/s", ingest, ceiling, "plain paho")]
        )
        return
    print(
        f"\nMQTT ingest benchmark: {args.messages:,} QoS 1 messages, Mosquitto on loopback; "
        f"the run with the median ratio of {args.runs} ({ratios})\n"
    )
    print(f"| {'what':<52} | {'msgs/s':>8} | {'ratio':>18} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 20}|")
    print(f"| {'plain paho subscriber, auto-ack (ceiling)':<52} | {ceiling:>8,.0f} | {'':>18} |")
    print(
        f"| {'relay: spooled, fsync, PUBACK after commit':<52} | {ingest:>8,.0f} | "
        f"{f'{ingest / ceiling:.2f}x (>= 0.7)':>18} |"
    )


if __name__ == "__main__":
    main()
