"""AMQP sink benchmark: relay's drain to RabbitMQ against plain pika, in one run.

    .venv/bin/python tests/bench/amqp_bench.py [--events 20000] [--windows 1,100] [--url ...] [--json]

Every run publishes the same persistent messages (same body, properties and ``mandatory``)
to a fresh durable queue, which it deletes afterwards. Prints one table (``--json``: the rows
of tests/bench/run_all's table instead).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).parents[2]))
from backlog import drain_rate, events
from summary import emit, row

from relay.config import AmqpSinkConfig, Settings
from relay.sinks.amqp_wire import properties
from tests.helpers.wait import wait_until

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@contextmanager
def fresh_queue(url: str, n: int) -> Iterator[str]:
    """A queue name for one run; on the way out, check it holds ``n`` messages, delete it."""
    name = f"relay-bench-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.queue_declare(name, durable=True)
        yield name

        def depth() -> int:
            return int(channel.queue_declare(name, durable=True).method.message_count)

        # Without confirms, the broker may still be at it.
        wait_until(lambda: depth() >= n, 10, f"{n} messages in {name}", interval=0.05)
        assert depth() == n, f"{depth()} messages in {name}, expected {n}"
        channel.queue_delete(name)
    finally:
        conn.close()


def drain(url: str, n: int, window: int) -> float:
    """Events/s for relay to deliver a backlog of ``n`` queued while the agent was down."""
    with fresh_queue(url, n) as queue:
        sink = AmqpSinkConfig(name="bus", type="amqp", url=url, queue=queue, window=window)
        return drain_rate(
            lambda state: Settings(node="bench", state_dir=state, sinks=[sink]), "bus", n
        )


def plain_pika(url: str, n: int, confirms: bool) -> float:
    """Events/s for a pika BlockingConnection publishing the same messages in a loop; with
    ``confirms`` each basic_publish waits for its confirm (pika's only way with it)."""
    messages = [(e.to_json(), properties(e)) for e in events(n)]
    with fresh_queue(url, n) as queue:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        channel = conn.channel()
        if confirms:
            channel.confirm_delivery()
        start = time.perf_counter()
        for body, props in messages:
            channel.basic_publish("", queue, body, props, mandatory=True)
        elapsed = time.perf_counter() - start
        conn.close()
    return n / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--windows", default="1,100", help="relay's windows, comma-separated")
    p.add_argument("--url", default=URL)
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    n, url = args.events, args.url
    runs: list[tuple[str, Callable[[], float]]] = [
        ("pika, one confirm at a time", lambda: plain_pika(url, n, confirms=True)),
        ("pika, no confirms (not lossless)", lambda: plain_pika(url, n, confirms=False)),
    ]
    for window in map(int, args.windows.split(",")):
        runs.append((f"relay drain, window = {window}", lambda w=window: drain(url, n, w)))
    rates = {what: run() for what, run in runs}
    one_by_one = rates["pika, one confirm at a time"]
    if args.json:
        vs = "pika, one confirm at a time"
        drains = [(what, rate) for what, rate in rates.items() if what.startswith("relay")]
        emit([row(f"AMQP {what[6:]}", "ev/s", rate, one_by_one, vs) for what, rate in drains])
        return
    print(f"\nAMQP benchmark: {n:,} persistent events to RabbitMQ at {url.split('@')[-1]}\n")
    print(f"| {'what':<34} | {'events/s':>10} | {'ratio':>36} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 38}|")
    for what, rate in rates.items():
        ratio = f"{rate / one_by_one:.1f}x pika one-at-a-time"
        if what.endswith("window = 100"):
            ratio += " (>= 5)"
        print(f"| {what:<34} | {rate:>10,.0f} | {ratio:>36} |")


if __name__ == "__main__":
    main()
