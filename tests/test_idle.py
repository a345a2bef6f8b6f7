"""P7: an idle agent sleeps. No thread wakes on a timer; measured from /proc over 30 s."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import toml
from tests.helpers.common import RELAY

WINDOW_S = 30


def wakeups_and_ticks(pid: int) -> tuple[int, int, int]:
    """(context switches of all threads, CPU ticks, thread count) of ``pid`` so far."""
    switches = 0
    tasks = os.listdir(f"/proc/{pid}/task")
    for tid in tasks:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return switches, int(fields[11]) + int(fields[12]), len(tasks)


@pytest.mark.slow
def test_idle_agent_does_not_wake_up(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    cfg = write_config(toml.http_sink("http://127.0.0.1:9/"))
    with subprocess.Popen(
        [*RELAY, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=relay_env
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "relay started" in line:
                break
        time.sleep(1)  # let start-up settle
        before = wakeups_and_ticks(proc.pid)
        time.sleep(WINDOW_S)
        after = wakeups_and_ticks(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    switches, ticks = after[0] - before[0], after[1] - before[1]
    print(
        f"idle {WINDOW_S}s with {after[2]} threads: {switches} context switches, "
        f"{ticks} CPU ticks ({100 * ticks / os.sysconf('SC_CLK_TCK') / WINDOW_S:.3f}% CPU)"
    )
    assert switches <= 5, f"{switches} wake-ups in {WINDOW_S}s: something polls"
    assert ticks <= 2
