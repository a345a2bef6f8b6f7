"""Command-line benchmark: the wall time of ``relay push`` and ``relay status``, beside the
floor of any Python command, in one run.

    .venv/bin/python tests/bench/cli_bench.py [--runs 20] [--json]

Each figure is the median of ``--runs`` runs of a fresh process, from fork+exec to exit, as
a person or a script on the box pays it: on a Pi Zero 2 W several times what it is here. The
baseline is ``python -c "import sqlite3, json"``: an interpreter that starts, imports what
any spool tool needs, and exits; what relay takes beyond it is mostly importing (``python -X
importtime -m relay push x`` shows what). The config holds an HTTP sink, an AMQP sink and an
MQTT source, so that a command importing the libraries of every adapter would show. Prints
one table (``--json``: the rows of tests/bench/run_all's table instead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from summary import Row, emit, row, table

FLOOR = [sys.executable, "-c", "import sqlite3, json"]
RELAY = [sys.executable, "-m", "relay"]
FLOOR_IS = 'python -c "import sqlite3, json"'

CONFIG = """\
node = "bench"
state_dir = "{state}"

[mqtt]
host = "127.0.0.1"

[[sources]]
type = "mqtt"
topics = ["home/#"]

[[sinks]]
name = "cloud"
type = "http"
url = "http://127.0.0.1:9/relay"

[[sinks]]
name = "bus"
type = "amqp"
url = "amqp://127.0.0.1:5672/%2F"
queue = "events"
"""


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    """Milliseconds from start to exit of ``argv``, which must succeed."""
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return 1000 * (time.perf_counter() - began)


def measure(runs: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="relay-cli-bench-") as tmp:
        cfg = Path(tmp) / "relay.toml"
        cfg.write_text(CONFIG.format(state=Path(tmp) / "state"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        env["RELAY_CONFIG"] = str(cfg)
        push = [*RELAY, "push", "door opened", "--payload", '{"state": "open"}']
        subprocess.run(push, env=env, check=True, stdout=subprocess.DEVNULL)  # makes the file
        # Interleaved, so that a burst of load elsewhere on the machine hits every figure.
        figures: dict[str, list[float]] = {"floor": [], "push": [], "status": []}
        for _ in range(runs):
            figures["floor"].append(wall_ms(FLOOR, env))
            figures["push"].append(wall_ms(push, env))
            figures["status"].append(wall_ms([*RELAY, "status"], env))
    floor = statistics.median(figures["floor"])
    return [
        row("relay push, wall time", "ms", statistics.median(figures["push"]), floor, FLOOR_IS),
        row("relay status, wall time", "ms", statistics.median(figures["status"]), floor, FLOOR_IS),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="runs per figure; the median is shown")
    p.add_argument("--json", action="store_true", help="print run_all's rows as JSON")
    args = p.parse_args()
    rows = measure(args.runs)
    if args.json:
        emit(rows)
        return
    print(f"\nrelay's commands, median of {args.runs} runs each\n")
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
