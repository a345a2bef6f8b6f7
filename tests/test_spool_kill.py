"""P1: every put that returned survives SIGKILL of the process, exactly once and in order."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from relay.spool import Spool

THREADS, PER_THREAD = 8, 2500


@pytest.mark.slow
def test_acknowledged_puts_survive_sigkill(tmp_path: Path) -> None:
    kill_after = random.Random().randint(500, THREADS * PER_THREAD - 500)
    cmd = [sys.executable, "-m", "tests.helpers.spool_producer", str(tmp_path)]
    acked: list[tuple[int, int]] = []
    with subprocess.Popen(
        [*cmd, str(THREADS), str(PER_THREAD)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    ) as proc:
        assert proc.stdout is not None
        # Reading on after the kill also collects lines already in the pipe: those puts
        # had returned too.
        for line in proc.stdout:
            if line == b"done\n":
                break
            t, i = map(int, line.split())
            acked.append((t, i))
            if len(acked) == kill_after:
                proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the producer finished before the kill"

    conn = sqlite3.connect(tmp_path / "spool.db")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with Spool.open(tmp_path, check=True) as spool:
        spool.register_sinks(["a"])
        stored = [
            (r.event.payload["t"], r.event.payload["i"]) for r in spool.lease("a", 10**6).records
        ]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:5]}"
    for t in range(THREADS):
        mine = [i for tt, i in stored if tt == t]
        assert mine == list(range(len(mine))), f"thread {t}'s events out of order or with gaps"
    print(f"killed after {kill_after} acks; {len(acked)} acknowledged, {len(stored)} stored")
