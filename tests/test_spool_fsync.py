"""What the spool fsyncs, counted with strace in a child process: every commit that stores
an event (durability "full"), and no commit that only acks (a lost ack re-sends, which
at-least-once allows; see relay/spool/writer.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.common import REQUIRE_BROKERS

N = 50

CHILD = f"""
import os, sys
from pathlib import Path
from relay.event import Event
from relay.spool import Spool
from relay.spool.writer import Pace

def mark(text):
    os.write(1, text.encode())  # one write(2) each: it shows in the trace between phases

with Spool.open(Path(sys.argv[1]), durability=sys.argv[2]) as spool:
    spool.register_sinks(["cloud"])
    mark("PUTS")
    for n in range({N}):
        spool.put(Event.new(node="n", source="test", name="door", payload=n))
    mark("ACKS")
    for seq in range(1, {N} + 1):
        spool.ack("cloud", seq)
        spool.sync()  # its commit, now
    mark("PUT")
    spool.put(Event.new(node="n", source="test", name="door", payload="last"))
    mark("END")
    print(spool.stats().sinks[0].depth)
"""


def fsyncs_by_phase(tmp_path: Path, durability: str) -> tuple[dict[str, int], str]:
    strace = shutil.which("strace")
    if strace is None:
        reason = "strace is not installed (apt-get install strace)"
        if REQUIRE_BROKERS:
            pytest.fail(reason)
        pytest.skip(reason)
    trace = tmp_path / "trace"
    traced = ["-f", "-qq", "-o", str(trace), "-e", "trace=fsync,fdatasync,write"]
    done = subprocess.run(
        [strace, *traced, sys.executable, "-c", CHILD, str(tmp_path / "state"), durability],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts: dict[str, int] = {}
    phase = "open"
    for line in trace.read_text().splitlines():
        for name in ("PUTS", "ACKS", "PUT", "END"):
            if f'write(1, "{name}"' in line:
                phase = name
        if "fsync(" in line or "fdatasync(" in line:
            counts[phase] = counts.get(phase, 0) + 1
    return counts, done.stdout


def test_puts_are_fsynced_and_acks_are_not(tmp_path: Path) -> None:
    counts, out = fsyncs_by_phase(tmp_path, "full")
    assert out.endswith("1\n"), out  # every ack landed: only the last put waits
    assert counts.get("PUTS", 0) >= N, counts  # one commit, one fsync, per blocking put
    assert counts.get("ACKS", 0) <= 2, counts  # none of their own (a checkpoint may sync)
    assert counts.get("PUT", 0) >= 1, counts  # back to "full" for the next event


def test_durability_normal_fsyncs_no_commit(tmp_path: Path) -> None:
    counts, _ = fsyncs_by_phase(tmp_path, "normal")
    assert counts.get("PUTS", 0) + counts.get("ACKS", 0) <= 2, counts


WINDOW_CHILD = f"""
import os, sys, threading, time
from pathlib import Path
from relay.event import Event
from relay.spool import Spool
from relay.spool.writer import Pace

def mark(text):
    os.write(1, text.encode())  # one write(2) each: its place in the trace

done = threading.Semaphore(0)
with Spool.open(Path(sys.argv[1]), durability="full", pace=Pace(commit_interval=1.0)) as spool:
    spool.register_sinks(["cloud"])
    for n in range({N}):
        mark(f"PUT {{n}};")
        spool.put_async(
            [Event.new(node="n", source="test", name="door", payload=n)],
            lambda error, n=n: (mark(f"ACK {{n}};"), done.release()),
        )
        time.sleep(0.05)
    for _ in range({N}):
        done.acquire()
"""


def test_a_commit_window_acknowledges_each_event_after_its_fsync(tmp_path: Path) -> None:
    """With commit_interval, events share commits (fewer fsyncs), and none is answered
    before an fsync that came after it was put."""
    strace = shutil.which("strace")
    if strace is None:
        reason = "strace is not installed (apt-get install strace)"
        if REQUIRE_BROKERS:
            pytest.fail(reason)
        pytest.skip(reason)
    trace = tmp_path / "trace"
    traced = ["-f", "-qq", "-o", str(trace), "-e", "trace=fsync,fdatasync,write"]
    subprocess.run(
        [strace, *traced, sys.executable, "-c", WINDOW_CHILD, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    put_at: dict[int, int] = {}
    ack_at: dict[int, int] = {}
    fsyncs: list[int] = []
    for i, line in enumerate(trace.read_text().splitlines()):
        if "fsync(" in line or "fdatasync(" in line:
            fsyncs.append(i)
        for kind, where in (("PUT", put_at), ("ACK", ack_at)):
            if f'write(1, "{kind} ' in line:
                where[int(line.split(f'"{kind} ', 1)[1].split(";", 1)[0])] = i
    assert sorted(ack_at) == list(range(N))
    for n in range(N):
        assert any(put_at[n] < f < ack_at[n] for f in fsyncs), f"event {n} answered unsynced"
    in_window = [f for f in fsyncs if put_at[0] < f < ack_at[N - 1]]
    assert len(in_window) <= N / 4, f"{len(in_window)} fsyncs for {N} events in a window"


MEMO_CHILD = """
import os, sys
from pathlib import Path
from relay.mqtt.memo import SubscriptionMemo

memo = SubscriptionMemo(Path(sys.argv[1]), "127.0.0.1:1883", "relay-hall")
os.write(1, b"SAVE")
memo.save([("home/#", 1)])
os.write(1, b"END")
"""


def test_the_subscription_memo_is_on_the_disk_before_it_is_relied_on(tmp_path: Path) -> None:
    """The memo says the broker keeps relay's subscriptions, so that a restart does not
    subscribe again (which makes the broker resend every retained message, stored again as
    new events). A power cut once left it empty: its data fsync'd before the rename, and
    the rename fsync'd (the directory) after."""
    strace = shutil.which("strace")
    if strace is None:
        if REQUIRE_BROKERS:
            pytest.fail("strace is not installed (apt-get install strace)")
        pytest.skip("strace is not installed (apt-get install strace)")
    trace = tmp_path / "trace"
    traced = ["-f", "-qq", "-o", str(trace), "-e", "trace=openat,fsync,rename,write", "-y"]
    subprocess.run(
        [strace, *traced, sys.executable, "-c", MEMO_CHILD, str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if '"SAVE"' in line)
    calls = [line.split(None, 1)[1] for line in lines[start:] if "(" in line]
    kinds = [
        "fsync memo" if c.startswith("fsync(") and "mqtt-subscriptions.tmp" in c
        else "rename" if c.startswith("rename(") and "mqtt-subscriptions.json" in c
        else f"fsync {tmp_path}" if c.startswith("fsync(") and f"<{tmp_path}>" in c
        else None
        for c in calls
    ]  # fmt: skip
    assert [k for k in kinds if k] == ["fsync memo", "rename", f"fsync {tmp_path}"], calls
