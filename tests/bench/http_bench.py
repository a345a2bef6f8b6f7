"""HTTP sink benchmark: relay's forwarder against plain httpx, in one run.

    .venv/bin/python tests/bench/http_bench.py [--events 20000] [--rate 50] [--seconds 10]
        [--runs 3] [--json]

The receiver runs in its own process (tests/bench/receiver.py). Prints one table
(``--json``: the rows of tests/bench/run_all's table instead).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from backlog import drain_rate, events
from summary import emit, row

from relay.agent import Agent
from relay.config import HttpSinkConfig, Settings

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReceiverProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "receiver.py"), str(self.port)], stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"ready\n"
        self.client = httpx.Client()

    def arrivals(self) -> dict[str, float]:
        return dict(self.client.get(f"http://127.0.0.1:{self.port}/").json())

    def reset(self) -> None:
        self.client.post(f"http://127.0.0.1:{self.port}/reset")

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait()


def settings(state_dir: Path, url: str, batch_max: int) -> Settings:
    sink = HttpSinkConfig(name="cloud", type="http", url=url, batch_max=batch_max)
    return Settings(node="bench", state_dir=state_dir, sinks=[sink])


def drain(rx: ReceiverProcess, n: int, batch_max: int) -> float:
    """Events/s to deliver a backlog of ``n`` that was queued while the agent was down."""
    rx.reset()
    rate = drain_rate(lambda state: settings(state, rx.url, batch_max), "cloud", n)
    assert len(rx.arrivals()) == n
    return rate


def plain_httpx(rx: ReceiverProcess, n: int) -> float:
    """The ceiling: one httpx.Client posting the same bodies back to back."""
    rx.reset()
    bodies = [(e.id, e.to_json()) for e in events(n)]
    with httpx.Client() as client:
        start = time.perf_counter()
        for key, body in bodies:
            r = client.post(
                rx.url,
                content=body,
                headers={"Content-Type": "application/json", "Idempotency-Key": key},
            )
            r.raise_for_status()
        elapsed = time.perf_counter() - start
    return n / elapsed


def latency(rx: ReceiverProcess, rate: float, seconds: float) -> list[float]:
    """push -> delivered, in ms, for events put into the spool at ``rate`` per second."""
    rx.reset()
    with tempfile.TemporaryDirectory() as d:
        agent = Agent(settings(Path(d), rx.url, 1))
        stop = threading.Event()
        runner = threading.Thread(target=agent.run, args=(stop,))
        runner.start()
        agent.ready.wait()
        assert agent.spool is not None
        pushed: dict[str, float] = {}
        next_at = time.monotonic()
        for e in events(int(rate * seconds)):
            next_at += 1 / rate
            time.sleep(max(next_at - time.monotonic(), 0))
            pushed[e.id] = time.monotonic()
            agent.spool.put(e)
        time.sleep(1)
        stop.set()
        runner.join()
    arrived = rx.arrivals()
    return [1000 * (arrived[i] - t) for i, t in pushed.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--runs", type=int, default=3, help="batch 1: the pair with the median ratio")
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    rx = ReceiverProcess()
    try:
        # The ceiling and batch 1 are close and the machine is noisy: pairs measured back to
        # back, the one with the median ratio reported (both of its figures, so they agree).
        pairs = sorted(
            ((drain(rx, args.events, 1), plain_httpx(rx, args.events)) for _ in range(args.runs)),
            key=lambda pair: pair[0] / pair[1],
        )
        one, ceiling = pairs[len(pairs) // 2]
        hundred = drain(rx, args.events, 100)
        lat = sorted(latency(rx, args.rate, args.seconds))
    finally:
        rx.close()
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    if args.json:
        at = f"spool.put -> HTTP delivered at {args.rate:g}/s"
        emit(
            [
                row("HTTP drain, batch_max 1", "ev/s", one, ceiling, "plain httpx POST loop"),
                row("HTTP drain, batch_max 100", "ev/s", hundred, ceiling, "plain httpx POST loop"),
                row(f"{at}, p50", "ms", p50),
                row(f"{at}, p99", "ms", p99),
            ]
        )
        return
    ratios = ", ".join(f"{r / c:.2f}" for r, c in pairs)
    print(
        f"\nHTTP benchmark: {args.events:,} events, receiver in its own process; batch 1 and "
        f"the ceiling from the pair with the median ratio of {args.runs} ({ratios})\n"
    )
    print(f"| {'what':<40} | {'value':>14} | {'ratio':>22} |")
    print(f"|{'-' * 42}|{'-' * 16}|{'-' * 24}|")
    print(f"| {'plain httpx POST loop (ceiling)':<40} | {ceiling:>10,.0f} ev/s | {'':>22} |")
    print(
        f"| {'relay drain, batch_max = 1':<40} | {one:>10,.0f} ev/s | "
        f"{f'{one / ceiling:.2f}x ceiling (>= 0.7)':>22} |"
    )
    print(
        f"| {'relay drain, batch_max = 100':<40} | {hundred:>10,.0f} ev/s | "
        f"{f'{hundred / one:.1f}x batch 1 (>= 10)':>22} |"
    )
    print(f"| {f'push -> delivered p50 at {args.rate:g}/s':<40} | {p50:>11.2f} ms | {'':>22} |")
    print(
        f"| {f'push -> delivered p99 at {args.rate:g}/s':<40} | {p99:>11.2f} ms | "
        f"{'(target < 20 ms)':>22} |"
    )


if __name__ == "__main__":
    main()
