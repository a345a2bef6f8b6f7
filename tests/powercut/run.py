"""Prove P1 across power cuts: relay in a virtual machine, its power pulled mid-stream.

    python -m tests.powercut.run --cuts 50 --events 20000                  # durability "full"
    python -m tests.powercut.run --durability normal --expect-loss         # the comparison
    python -m tests.powercut.run --spool commit_interval=200ms             # any [spool] key

What a run does: :mod:`tests.powercut.powercuts`; why it is sound: README.md beside this
file. The last line is ``power cuts: N, acknowledged: M, lost: L, duplicates: D``; the exit
status is 1 if acknowledged events were lost (unless ``--expect-loss``), the spool failed its
check, or the ledger is unsound; 0 with a "skipped:" line if relay rejects the ``--spool``
keys or no guest can be had here (1 under CI, ``RELAY_REQUIRE_BROKERS=1``).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from tests.helpers.common import REQUIRE_BROKERS
from tests.powercut.common import ImageError
from tests.powercut.powercuts import ConfigRejected, Options, PowerCuts, Skipped

# ---------------------------------------------------------------------- command line


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m tests.powercut.run",
        description="relay in a VM, its power pulled mid-stream: the ledger of P1.",
    )
    p.add_argument("--cuts", type=int, default=50, help="power cuts (default 50)")
    p.add_argument("--events", type=int, help="numbered events (default 400 per cut)")
    p.add_argument("--durability", default="full", help='[spool] durability (default "full")')
    p.add_argument(
        "--spool",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another [spool] key, e.g. commit_interval=200ms (a bare value is a string)",
    )
    p.add_argument("--seed", type=int, help="replay a run's plan (printed at the start)")
    p.add_argument("--rate", type=float, default=5.0, help="the trickle, events/s (default 5)")
    p.add_argument(
        "--expect-loss",
        action="store_true",
        help="report lost events without failing (for durability normal)",
    )
    p.add_argument("--workdir", type=Path, help="keep consoles, images and logs here")
    p.add_argument("--cpus", type=int, default=2, help="the guest's CPUs (default 2)")
    a = p.parse_args(argv)
    spool = {}
    for item in a.spool:
        key, eq, value = item.partition("=")
        if not eq:
            p.error(f"--spool {item!r}: expected KEY=VALUE")
        spool[key] = value if value[:1] in "\"'[{" or _number(value) else f'"{value}"'
    return Options(
        cuts=a.cuts,
        events=a.events if a.events is not None else 400 * a.cuts,
        durability=a.durability,
        spool=spool,
        seed=a.seed if a.seed is not None else random.SystemRandom().randrange(10**6),
        rate=a.rate,
        expect_loss=a.expect_loss,
        workdir=a.workdir,
        cpus=a.cpus,
    )


def _number(value: str) -> bool:
    return value in ("true", "false") or value.replace(".", "", 1).lstrip("-").isdigit()


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    extra = "".join(f" --spool {k}={v}" for k, v in opts.spool.items())
    print(
        f"power-cut run: {opts.cuts} cuts, {opts.events} events, durability "
        f"{opts.durability!r}{extra}, seed {opts.seed} (replay with --seed {opts.seed})",
        flush=True,
    )
    started = time.monotonic()
    # SIGTERM (a CI timeout, kill) unwinds like ^C: qemu and the broker are stopped on the
    # way out instead of being left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    runner = PowerCuts(opts, sys.stdout)
    try:
        report = runner.run()
    except (Skipped, ImageError) as why:
        print(f"skipped: {why}")
        if opts.workdir is None:
            shutil.rmtree(runner.workdir, ignore_errors=True)
        # Under CI a guest must be had: a skip there would hide a harness that never ran. A
        # config this checkout rejects is a variant for later, not a missing guest.
        return 1 if REQUIRE_BROKERS and not isinstance(why, ConfigRejected) else 0
    for line in report.details():
        print(line)
    problems = report.problems(expect_loss=opts.expect_loss)
    for problem in problems:
        print(f"FAILED: {problem}")
    if report.lost and opts.expect_loss:
        print(f"(lost events expected with durability {opts.durability!r}: --expect-loss)")
    if opts.workdir is None and not problems:
        shutil.rmtree(runner.workdir, ignore_errors=True)  # keep it only to look into
    else:
        print(f"consoles, the broker's log and the data disk: {runner.workdir}")
    print(f"took {time.monotonic() - started:.0f}s")
    print(report.summary())
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
