"""Draining a backlog to a flaky HTTP remote (issue 3/7), beside the same drain to a remote
that does not fail, in one run.

    .venv/bin/python tests/bench/flaky_bench.py [--events 10000] [--refusing-events N]
        [--seed 1] [--json]

Two drains of a backlog queued while the agent was down, each beside its baseline:

flaky      batch_max 1, the remote answers 500 (no Retry-After) to 20 % of the requests,
           drawn at random; baseline: the same remote with no failures.
refusing   batch_max 100, every 97th event has ``"bad": true`` in its payload and the
           remote refuses (400) any request holding one, and fails 20 % of the requests
           (half 429 with Retry-After: 1, half 500); relay dead-letters the bad events after
           max_retries and delivers every other one in order; baseline: the same remote and
           backlog without bad events.

The remote runs in its own process (tests/bench/remote.py); relay's HTTP sink has the
defaults besides batch_max (max_retries 5). Whether every event arrived, in order and once,
is reported beside the figures; an event lost makes the bench fail (exit status 1), since
its figure would then mean nothing. Prints one table (``--json``: run_all's rows instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from remote_drain import Arrived, RemoteProcess, arrived, drain, http_settings, quiet_relay
from summary import Row, emit, row, table

from relay.event import Event

FAIL = 0.2
BAD_EVERY = 97


def backlog(n: int, *, marked: bool) -> list[Event]:
    """``n`` events; with ``marked``, every 97th has ``"bad": true`` in its payload."""
    return [
        Event.new(
            node="bench",
            source="bench",
            name="home/hall/door",
            payload={"bad": True, "i": i, "state": "open"}
            if marked and i % BAD_EVERY == BAD_EVERY - 1
            else {"i": i, "state": "open"},
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class Run:
    seconds: float
    arrived: Arrived
    dead: int  # events relay dead-lettered
    bad: int  # events in the backlog the remote refuses

    @property
    def events(self) -> int:
        return self.arrived.expected + self.bad

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def verdict(self) -> str:
        if not self.bad and not self.dead:
            return self.arrived.verdict()
        return f"{self.arrived.verdict()}; {self.dead:,} of {self.bad:,} bad dead-lettered"


def run(what: str, flags: list[str], events: list[Event], batch_max: int) -> Run:
    """Drain ``events`` through relay to a remote started with ``flags``."""
    bad = [e.id for e in events if isinstance(e.payload, dict) and e.payload.get("bad")]
    with RemoteProcess(*flags) as remote:
        drained = drain(lambda state: http_settings(state, remote.url, batch_max=batch_max), events)
        refused = set(bad)
        got = arrived(remote.stats(), [e.id for e in events if e.id not in refused])
    got.check(what)
    # A good event dead-lettered is lost (checked above); a bad one not dead-lettered was
    # delivered, which the remote never allows (also checked): this only counts.
    result = Run(drained.seconds, got, len(drained.dead), len(bad))
    print(f"{what}: {result.seconds:.1f} s, {result.verdict()}", file=sys.stderr, flush=True)
    return result


def flaky(n: int, seed: int) -> tuple[Run, Run]:
    """(relay against the flaky remote, relay against the same remote not failing)."""
    events = backlog(n, marked=False)
    base = run("flaky baseline", [], events, 1)
    test = run("flaky", ["--fail", str(FAIL), "--seed", str(seed)], events, 1)
    return test, base


def refusing(n: int, seed: int) -> tuple[Run, Run]:
    """(relay with bad events in the backlog, relay with none), same remote."""
    flags = ["--refuse-marked", "--fail", str(FAIL), "--retry-after-share", "0.5"]
    flags += ["--seed", str(seed)]
    base = run("refusing baseline", flags, backlog(n, marked=False), 100)
    test = run("refusing", flags, backlog(n, marked=True), 100)
    return test, base


def rows(flaky_runs: tuple[Run, Run], refusing_runs: tuple[Run, Run]) -> list[Row]:
    (f, f0), (r, r0) = flaky_runs, refusing_runs
    flaky_name = "HTTP flaky remote (500 to 20 %), batch_max 1"
    refusing_name = (
        f"HTTP refusing 1 in {BAD_EVERY} + 20 % flaky (half 429 Retry-After 1), batch_max 100"
    )
    flaky_vs, refusing_vs = "the same remote, no failures", "the same, no bad events"
    return [
        row(f"{flaky_name} [{f.verdict()}]", "ev/s", f.rate, f0.rate, flaky_vs),
        row(f"{flaky_name}: drain", "ms", 1000 * f.seconds, 1000 * f0.seconds, flaky_vs),
        row(
            f"{refusing_name} [{r.verdict()}]: drain",
            "ms",
            1000 * r.seconds,
            1000 * r0.seconds,
            refusing_vs,
        ),
        row(
            f"{refusing_name}: requests",
            "requests",
            r.arrived.total_requests,
            r0.arrived.total_requests,
            refusing_vs,
        ),
    ]


def notes(flaky_runs: tuple[Run, Run], refusing_runs: tuple[Run, Run]) -> list[str]:
    lines = []
    for name, (test, base) in (("flaky", flaky_runs), ("refusing", refusing_runs)):
        for label, r in ((name, test), (f"{name} baseline", base)):
            statuses = ", ".join(f"{s}: {c:,}" for s, c in r.arrived.requests.items())
            lines.append(
                f"{label}: {r.seconds:,.1f} s, {r.rate:,.1f} ev/s, requests {statuses}; "
                f"{r.verdict()}"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=10_000, help="the backlog of each drain")
    p.add_argument(
        "--refusing-events",
        type=int,
        help="the refusing drain's backlog, if not --events: each bad event costs seconds",
    )
    p.add_argument("--seed", type=int, default=1, help="of the remote's failures")
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    quiet_relay()
    flaky_runs = flaky(args.events, args.seed)
    refusing_runs = refusing(args.refusing_events or args.events, args.seed)
    got = rows(flaky_runs, refusing_runs)
    if args.json:
        emit(got)
        return
    print(
        f"\nflaky remote benchmark: backlogs queued while the agent was down, the remote in "
        f"its own process, load average {os.getloadavg()[0]:.2f}\n"
    )
    print("\n".join(table(got)))
    print()
    print("\n".join(notes(flaky_runs, refusing_runs)))


if __name__ == "__main__":
    main()
