"""Draining a backlog to a remote far away (issue 7/7): relay's HTTP sink with ``max_in_flight``
requests under way at once, beside plain httpx sending the same events with the same
concurrency, in one run.

    .venv/bin/python tests/bench/latency_bench.py [--events 5000] [--delays 0,20,100]
        [--in-flight 1,4,16] [--json]

For each delay of the remote (tests/bench/remote.py ``--delay-ms``, in its own process) and
each concurrency N: events/s for relay to drain a backlog queued while the agent was down
(``batch_max`` 1, ``max_in_flight`` N), and for N threads, each with its own httpx.Client
(made before the clock starts), POSTing the same events one per request. A relay that does
not know ``max_in_flight`` (a ConfigError) gets "n/a" (NaN in ``--json``), and the httpx
figures are still measured. An event lost makes the bench fail; whether relay's events
arrived in the order of the spool is reported (the remote's order of first arrival: with
more than one request in flight, a later one may be answered first). Prints one table
(``--json``: run_all's rows instead).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from backlog import events
from remote_drain import RemoteProcess, arrived, drain, http_settings, quiet_relay
from summary import Row, emit, row

from relay.errors import ConfigError
from relay.event import Event

NOT_AVAILABLE = "n/a (max_in_flight not available)"


def plain_httpx(url: str, backlog: list[Event], threads: int) -> float:
    """Events/s for ``threads`` threads, a keep-alive httpx.Client each, to POST the
    events one per request, each thread taking the next event not yet taken. The clients
    are made before the clock starts, as http_bench.py's ceiling does (an SSL context each:
    tens of ms on a loaded machine, most of a short run)."""
    bodies = iter([(e.id, e.to_json()) for e in backlog])
    lock = threading.Lock()

    def send(client: httpx.Client) -> None:
        while True:
            with lock:
                key, body = next(bodies, ("", b""))
            if not key:
                return
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            client.post(url, content=body, headers=headers).raise_for_status()

    clients = [httpx.Client() for _ in range(threads)]
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for done in [pool.submit(send, client) for client in clients]:
                done.result()  # an error in a thread stops the bench here
        return len(backlog) / (time.perf_counter() - start)
    finally:
        for client in clients:
            client.close()


def relay_drain(remote: RemoteProcess, backlog: list[Event], in_flight: int) -> tuple[float, str]:
    """(events/s, what arrived) for relay; (NaN, why not) if it refuses ``max_in_flight``."""
    try:
        drained = drain(
            lambda state: http_settings(state, remote.url, max_in_flight=in_flight), backlog
        )
    except ConfigError as exc:
        if "max_in_flight" not in str(exc):
            raise
        return math.nan, NOT_AVAILABLE
    got = arrived(remote.stats(), [e.id for e in backlog])
    got.check(f"relay, max_in_flight {in_flight}")
    return len(backlog) / drained.seconds, got.verdict()


def measure(n: int, delay_ms: float, in_flight: int) -> tuple[float, float, str]:
    """(relay's events/s, plain httpx's, what arrived of relay's) at one delay and
    concurrency."""
    backlog = events(n)
    with RemoteProcess("--delay-ms", str(delay_ms)) as remote:
        rate, verdict = relay_drain(remote, backlog, in_flight)
        remote.reset()
        baseline = plain_httpx(remote.url, backlog, in_flight)
        got = arrived(remote.stats(), [e.id for e in backlog])
        got.check(f"plain httpx, {in_flight} threads")
    relay = verdict if math.isnan(rate) else f"{rate:,.0f} ev/s ({verdict})"
    print(
        f"remote at {delay_ms:g} ms, {in_flight} in flight: relay {relay}, "
        f"httpx {baseline:,.0f} ev/s",
        file=sys.stderr,
        flush=True,
    )
    return rate, baseline, verdict


def numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=5_000, help="the backlog of each drain")
    p.add_argument("--delays", type=numbers, default=[0, 20, 100], help="the remote's, in ms")
    p.add_argument("--in-flight", type=numbers, default=[1, 4, 16], help="requests at once")
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    quiet_relay()
    rows: list[Row] = []
    grid: list[tuple[str, ...]] = []
    for delay in args.delays:
        for k in args.in_flight:
            rate, baseline, verdict = measure(args.events, delay, k)
            figure = f"HTTP remote at {delay} ms, max_in_flight {k}"
            vs = f"plain httpx, {k} thread{'s' if k > 1 else ''}, a client each"
            rows.append(row(f"{figure} [{verdict}]", "ev/s", rate, baseline, vs))
            grid.append(cells(delay, k, rate, baseline, verdict))
    if args.json:
        emit(rows)
        return
    print(
        f"\nremote latency benchmark: {args.events:,}-event backlogs, batch_max 1, remote in "
        f"its own process, load average {os.getloadavg()[0]:.2f}\n"
    )
    print("\n".join(markdown(HEAD, grid)))


HEAD = ("remote", "in flight", "relay", "plain httpx", "ratio", "relay's events")


def cells(delay: int, k: int, rate: float, baseline: float, verdict: str) -> tuple[str, ...]:
    relay, ratio = (
        ("n/a", "-") if math.isnan(rate) else (f"{rate:,.0f} ev/s", f"{rate / baseline:.2f}x")
    )
    return (f"{delay} ms", str(k), relay, f"{baseline:,.0f} ev/s", ratio, verdict)


def markdown(head: tuple[str, ...], lines: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table; the last column (words) aligned left, the others right."""
    widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head))]

    def fmt(line: tuple[str, ...]) -> str:
        padded = [t.rjust(w) for t, w in zip(line[:-1], widths, strict=False)]
        return f"| {' | '.join([*padded, line[-1].ljust(widths[-1])])} |"

    rule = "|".join("-" * (w + 1) + ":" for w in widths[:-1])
    return [fmt(head), f"|{rule}|{'-' * (widths[-1] + 2)}|", *map(fmt, lines)]


if __name__ == "__main__":
    main()
