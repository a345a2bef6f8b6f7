"""A full disk and a read-only state dir, end to end (P1, P5, P8; issue 7/9).

The state dir is a real 2 MiB tmpfs, filled with a file the test then deletes, or a real
read-only bind mount (we run as root, so chmod would prove nothing). Each test runs
``relay run`` as a subprocess against a private Mosquitto and a local HTTP sink.

What "no PUBACK without a commit" means here: relay is killed with SIGKILL while the disk
is full, so whatever it held only in memory is gone. Every message the broker took from
the publisher must still reach the sink after space is freed: either it was committed
(then relay may have acknowledged it), or the broker still has it (relay did not). A
message relay acknowledged without committing it would be in neither place: lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fault.harness import (
    AgentProcess,
    Ledger,
    http_numbers,
    http_sink_part,
    integrity_check,
    mqtt_part,
    numbered,
)
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.common import about_the_run
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mqtt import Publisher, spooled, unique
from tests.helpers.wait import wait_until
from tests.test_systemd_agent import FakeSystemd

pytestmark = [pytest.mark.root]

FULL = "no space left on the disk holding"  # what relay says when SQLite reports SQLITE_FULL


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs / a read-only bind mount: needs root (CI runs as root)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    # Private: the messages relay refuses wait at this broker, beyond the shared one's
    # max_queued_messages (1000), which would drop the excess silently.
    with PrivateMosquitto(tmp_path / "mosquitto", extra="max_queued_messages 100000\n") as b:
        yield b


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@contextmanager
def tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` for the block."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path`` made read-only for the block: a bind mount onto itself, remounted ro."""
    _run("mount", "--bind", str(path), str(path))
    try:
        _run("mount", "-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        _run("umount", "--lazy", str(path))  # something still has a file open there


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(directory: Path, leave: int = 0, name: str = "filler") -> Path:
    """A file ``name`` taking all the free space in ``directory`` but ``leave`` bytes."""
    filler = directory / name
    with filler.open("wb") as f:
        size = max(free_bytes(directory) - leave, 0)
        while size > 0:
            try:
                size -= f.write(b"\0" * min(size, 1 << 16))
            except OSError:  # ENOSPC: rounding to whole pages; full is full
                break
    return filler


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_delivered(ledger: Ledger, remote: RemoteServer) -> bool:
    ledger.replace("cloud", http_numbers(remote))
    return ledger.complete("cloud")


def noisy(agent: AgentProcess, since: int) -> list[str]:
    """relay's own log lines (httpx logs one per request at INFO) from ``since`` on."""
    return [ln for ln in agent.text(since).splitlines() if ln and "httpx" not in ln]


@pytest.mark.slow
def test_full_disk_holds_messages_at_the_broker_and_recovers(
    tmp_path: Path, broker: PrivateMosquitto
) -> None:
    topic, total, pad = unique("full/"), 600, "x" * 1000
    sink_up = {"on": False}
    with (
        tmpfs(tmp_path / "state") as state,
        RemoteServer(lambda r, n: Reply(200 if sink_up["on"] else 503)) as remote,
    ):
        filler = fill(state, leave=300_000)  # room for a few hundred of these events
        agent = AgentProcess(
            tmp_path / "agent",
            mqtt_part(broker.port, topic),
            http_sink_part(remote.url, retry_initial="100ms", retry_max="500ms"),
            state_dir=state,
        )
        with agent, Publisher(broker.host, broker.port) as pub:
            agent.start(ready="mqtt: subscribed")
            mids = [
                pub.publish(f"{topic}/seq", json.dumps({"n": n, "pad": pad})) for n in range(total)
            ]
            pub.wait(mids)  # the broker has every message: it keeps what relay does not ack
            agent.wait_line(FULL, 30)

            # Full: the agent stays up, quiet and idle-ish, and says why.
            mark, cpu0, t0 = agent.mark(), cpu_seconds(agent.pid or 0), time.monotonic()
            time.sleep(5)
            cpu = (cpu_seconds(agent.pid or 0) - cpu0) / (time.monotonic() - t0)
            lines = noisy(agent, mark)
            assert agent.running, agent.tail()
            assert cpu < 0.5, f"{cpu:.0%} CPU while the disk is full: a busy loop?"
            assert len(lines) <= 10, "a log storm while the disk is full:\n" + "\n".join(lines)
            errors = [ln for ln in noisy(agent, 0) if ln.startswith(("ERROR", "CRITICAL"))]
            assert any(FULL in ln and str(state) in ln for ln in errors), agent.tail()
            assert "Traceback" not in agent.text(), agent.text()

            # `relay push` on the full disk: exit 1, one line that says so. The agent's
            # commits of 1 kB events no longer fit; a small event may still fit in what they
            # left (the bytes of a disk block, the WAL's slack, 1 KiB pages): the top-up takes
            # the first; a push that fits in the others is stored (exit 0), and the pushes go
            # on until one finds no room. Their payloads carry no "n": not in the ledger.
            topup = fill(state, name="topup")
            for k in range(100):
                push = agent.cli("push", "door", "--payload", json.dumps({"push": k}))
                if push.returncode != 0:
                    break
            assert push.returncode == 1, push
            assert push.stderr.count("\n") == 1 and FULL in push.stderr, push.stderr
            status = agent.cli("status")  # reads work on a full disk, and it says so
            assert status.returncode == 0, status
            assert "low disk: " in status.stdout, status.stdout

            held = numbered(spooled(state))
            assert 0 < len(held) < total, f"{len(held)} of {total} spooled on a 2 MiB disk"
            agent.kill()  # what relay held only in memory is gone now

            filler.unlink()
            topup.unlink()
            sink_up["on"] = True
            freed_at = time.monotonic()
            agent.start()
            ledger = Ledger(range(total))
            wait_until(
                lambda: all_delivered(ledger, remote),
                60,
                "every message delivered after space was freed",
            )
            drained = time.monotonic() - freed_at
            report = ledger.check("cloud", disruptions=agent.kills)
            assert integrity_check(state) == "ok"
            assert agent.running, agent.tail()
    print(
        f"\n2 MiB state dir with 300 kB free: {len(held)} of {total} 1 kB events stored before"
        f" the disk was full; {cpu:.1%} CPU and {len(lines)} log lines in 5 s while full;"
        f" {k} small pushes fitted after that; all {total} delivered {drained:.1f}s after space"
        f" was freed; {report.line()}"
    )


def test_a_small_disk_is_not_filled_by_the_wal(tmp_path: Path, broker: PrivateMosquitto) -> None:
    """SQLite lets the WAL grow to ~4 MB before it copies it back into the database: on a
    disk with less room than that, the WAL alone filled it after about a hundred events,
    and no write succeeded again. relay keeps the WAL small when space is short."""
    topic, total = unique("small/"), 3000
    with tmpfs(tmp_path / "state") as state, RemoteServer() as remote:
        agent = AgentProcess(
            tmp_path / "agent",
            mqtt_part(broker.port, topic),
            http_sink_part(remote.url),
            state_dir=state,
        )
        with agent, Publisher(broker.host, broker.port) as pub:
            agent.start(ready="mqtt: subscribed")
            assert agent.find("checkpointing often"), agent.tail()  # told why, once
            pub.wait([pub.publish(f"{topic}/seq", json.dumps({"n": n})) for n in range(total)])
            ledger = Ledger(range(total))
            wait_until(
                lambda: all_delivered(ledger, remote),
                60,
                f"{total} events through a 2 MiB state dir",
            )
            ledger.check("cloud")
            assert not agent.find(FULL), agent.tail()


@pytest.mark.slow
def test_full_disk_at_start_is_waited_out(tmp_path: Path, broker: PrivateMosquitto) -> None:
    """A disk full when relay starts (it opens its spool, the WAL needs room for its -shm
    file: SQLite says "disk I/O error"): one line naming the disk, no exit, the spool kept
    as it is (a full disk is not a corrupt file), and the MQTT session left at the broker,
    which keeps the messages. The space comes back 30 s later: everything is delivered
    within 60 s, with no restart by hand."""
    topic, total = unique("full/"), 200
    with tmpfs(tmp_path / "state") as state, RemoteServer() as remote:
        agent = AgentProcess(
            tmp_path / "agent", mqtt_part(broker.port, topic), http_sink_part(remote.url),
            state_dir=state,
        )  # fmt: skip
        with agent, Publisher(broker.host, broker.port) as pub:
            agent.start(ready="mqtt: subscribed")  # the session, and its subscription
            assert agent.terminate() == 0, agent.tail()
            for n in range(3):
                agent.push("door", {"n": -1 - n})  # already in the spool
            filler = fill(state)
            mark = agent.start(ready=None)
            line = agent.wait_line(FULL, 20, since=mark)
            pub.wait([pub.publish(f"{topic}/seq", json.dumps({"n": n})) for n in range(total)])
            time.sleep(30)  # the outage: relay must wait it out, not exit
            problems = [ln for ln in noisy(agent, mark) if not ln.startswith("INFO")]
            assert agent.running, agent.tail()
            assert problems == [line.text], problems  # one line, not one per try
            assert line.text.startswith("ERROR") and str(state) in line.text, line.text
            assert not list(state.glob("spool.db.corrupt-*")), "a sound spool was set aside"
            filler.unlink()
            freed_at = time.monotonic()
            ledger, pushed = Ledger(range(total)), Ledger([-1, -2, -3])

            def everything() -> bool:
                ledger.replace("cloud", http_numbers(remote, f"{topic}/seq"))
                pushed.replace("cloud", http_numbers(remote, "door"))
                return ledger.complete("cloud") and pushed.complete("cloud")

            wait_until(
                everything,
                60,
                "everything delivered after space was freed",
                detail=agent.tail,
            )
            delivered = time.monotonic() - freed_at
            ledger.check("cloud")
            assert agent.find("can be written again", since=mark), agent.tail()
            assert integrity_check(state) == "ok"
    print(f"\ndisk full at start: waited; all delivered {delivered:.1f}s after space was freed")


@pytest.mark.parametrize("spool_exists", [False, True], ids=["first-start", "existing-spool"])
def test_read_only_state_dir_is_waited_out(tmp_path: Path, spool_exists: bool) -> None:
    """A state dir that turned read-only (an SD card the kernel remounted ro after errors):
    one line naming the directory at once, then relay waits (READY=1 and the watchdog
    meanwhile, under systemd) instead of exiting into a restart loop; the config is not
    wrong, and the file system may come back writable. When it does, relay starts by
    itself."""
    state = tmp_path / "state"
    state.mkdir()
    agent = AgentProcess(
        tmp_path / "agent", http_sink_part("http://127.0.0.1:9/x"), state_dir=state
    )
    if spool_exists:
        agent.push("door", {"n": 0})
    before = sorted(p.name for p in state.iterdir())
    systemd = FakeSystemd(tmp_path / "notify.sock")  # the watchdog: 1 ping a second
    notify = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"}
    with agent:
        with read_only(state):
            started = time.monotonic()
            mark = agent.start(ready=None, env=notify)
            line = agent.wait_line("Read-only file system", 10, since=mark)
            took = time.monotonic() - started
            push = agent.cli("push", "door")
            time.sleep(3)  # a few tries at the disk: each is not a line
            lines = about_the_run(agent.text(mark).splitlines())
            problems = [ln for ln in lines if not ln.startswith("INFO")]
            waiting = systemd.texts()
            assert sorted(p.name for p in state.iterdir()) == before  # nothing moved or made
            assert agent.running, agent.tail()
        agent.wait_line("relay started", 30, since=mark)
    systemd.close()
    # Under systemd: up and waiting on purpose, and saying why; the watchdog is pinged.
    assert "READY=1" in waiting, waiting
    assert any(t.startswith("STATUS=waiting: ") and "Read-only" in t for t in waiting), waiting
    assert waiting.count("WATCHDOG=1") >= 2, waiting
    assert problems == [line.text], problems
    assert line.text.startswith("ERROR") and str(state) in line.text, line.text
    assert took < 10
    assert push.returncode == 1 and push.stderr.count("\n") == 1, push
    assert "read-only" in push.stderr and str(state) in push.stderr, push.stderr
