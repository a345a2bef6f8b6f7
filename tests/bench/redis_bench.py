"""Redis Streams sink benchmark: relay's drain against plain redis-py XADD, in one run.

    .venv/bin/python tests/bench/redis_bench.py [--events 20000] [--windows 1,100] [--runs 3]
                                                [--url redis://127.0.0.1:6379/0] [--json]

Every run XADDs the same entries (fields ``id`` and ``event``, as the sink writes them) to a
fresh stream key, checks that the stream holds all of them, and deletes it. Each figure is
the median of ``--runs`` runs. Prints one table (``--json``: the rows of tests/bench/run_all's
table instead).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from backlog import drain_rate, events
from redis.typing import EncodableT, FieldT
from summary import emit, row

from relay.config import RedisSinkConfig, Settings, mask_url

URL = "redis://127.0.0.1:6379/0"
PIPELINE = 100  # the plain redis-py runs' pipeline length


@contextmanager
def fresh_stream(client: redis.Redis, n: int) -> Iterator[str]:
    """A stream key for one run; on the way out, check it holds ``n`` entries, delete it."""
    key = f"relay-bench:{uuid.uuid4().hex[:8]}"
    try:
        yield key
        assert client.xlen(key) == n, f"{client.xlen(key)} entries in {key}, expected {n}"
    finally:
        client.delete(key)


def drain(client: redis.Redis, url: str, n: int, window: int) -> float:
    """Events/s for relay to deliver a backlog of ``n`` queued while the agent was down."""
    with fresh_stream(client, n) as stream:
        sink = RedisSinkConfig(name="work", type="redis", url=url, stream=stream, window=window)
        return drain_rate(
            lambda state: Settings(node="bench", state_dir=state, sinks=[sink]), "work", n
        )


def plain(client: redis.Redis, n: int, pipeline: int, transaction: bool = False) -> float:
    """Events/s for redis-py XADDing the same entries, ``pipeline`` per round trip (1: one
    command at a time); ``transaction``: each pipeline wrapped in MULTI/EXEC."""
    entries: list[dict[FieldT, EncodableT]] = [
        {"id": e.id, "event": e.to_json()} for e in events(n)
    ]
    with fresh_stream(client, n) as stream:
        start = time.perf_counter()
        if pipeline == 1:
            for fields in entries:
                client.xadd(stream, fields)
        else:
            for i in range(0, n, pipeline):
                pipe = client.pipeline(transaction=transaction)
                for fields in entries[i : i + pipeline]:
                    pipe.xadd(stream, fields)
                pipe.execute()
        elapsed = time.perf_counter() - start
    return n / elapsed


def median(run: Callable[[], float], runs: int) -> float:
    return statistics.median(run() for _ in range(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--windows", default="1,100", help="relay's windows, comma-separated")
    p.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    p.add_argument("--url", default=URL)
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    n, url, runs = args.events, args.url, args.runs
    client = redis.Redis.from_url(url)
    ceiling_name = f"redis-py pipeline of {PIPELINE}"
    rows: list[tuple[str, Callable[[], float]]] = [
        ("redis-py XADD, one at a time", lambda: plain(client, n, 1)),
        (ceiling_name, lambda: plain(client, n, PIPELINE)),
        (f"redis-py MULTI/EXEC of {PIPELINE}", lambda: plain(client, n, PIPELINE, True)),
    ]
    for window in map(int, args.windows.split(",")):
        rows.append((f"relay drain, window = {window}", lambda w=window: drain(client, url, n, w)))
    rates = {what: median(run, runs) for what, run in rows}
    client.close()
    ceiling, one_by_one = rates[ceiling_name], rates["redis-py XADD, one at a time"]
    if args.json:
        drains = [(what, rate) for what, rate in rates.items() if what.startswith("relay")]
        emit(
            [row(f"Redis {what[6:]}", "ev/s", rate, ceiling, ceiling_name) for what, rate in drains]
        )
        return
    print(
        f"\nRedis benchmark: {n:,} events XADDed to a stream at {mask_url(url)}, median of {runs}\n"
    )
    print(f"| {'what':<34} | {'events/s':>10} | {'vs pipeline':>11} | {'vs one at a time':>16} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 13}|{'-' * 18}|")
    for what, rate in rates.items():
        print(
            f"| {what:<34} | {rate:>10,.0f} | {rate / ceiling:>10.2f}x | "
            f"{rate / one_by_one:>15.1f}x |"
        )


if __name__ == "__main__":
    main()
