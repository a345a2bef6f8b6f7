"""`relay run` under a stand-in for systemd: a datagram socket as NOTIFY_SOCKET, the
watchdog variables, signals. (There is no systemd as PID 1 here.)"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import relay
from relay.event import Event
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.common import RELAY
from tests.helpers.http_server import RemoteServer
from tests.helpers.wait import wait_until


class FakeSystemd:
    """Receives sd_notify datagrams; ``messages`` holds (monotonic time, text) pairs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def texts(self) -> list[str]:
        return [m for _, m in self.messages]

    def times(self, text: str) -> list[float]:
        return [t for t, m in self.messages if m == text]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


@contextlib.contextmanager
def start(
    cfg: Path, env: dict[str, str], systemd: FakeSystemd, **extra: str
) -> Iterator[subprocess.Popen[str]]:
    """`relay run` as systemd would run it; killed at the end if it is still running."""
    env = {**env, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000", **extra}
    with subprocess.Popen(
        [*RELAY, "run", "--config", str(cfg)], env=env, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()


def test_ready_status_watchdog_stopping(
    systemd: FakeSystemd, write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    with RemoteServer() as remote:
        cfg = write_config(toml.http_sink(remote.url))
        with start(cfg, relay_env, systemd) as proc:
            wait_until(lambda: "READY=1" in systemd.texts(), 20, "READY=1")
            wait_until(lambda: len(systemd.times("WATCHDOG=1")) >= 4, 10, "watchdog pings")
            assert "STATUS=queued: cloud 0" in systemd.texts()
            relay.push("door opened", config_path=cfg)
            wait_until(lambda: len(remote.accepted()) == 1, 10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    texts = systemd.texts()
    assert texts.index("READY=1") < texts.index("STOPPING=1")
    assert texts[-1] == "STOPPING=1"
    pings = systemd.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 2.0, "pings every half WATCHDOG_USEC (0.5 s), give or take"


@pytest.mark.slow
def test_a_wedged_forwarder_stops_the_pings(
    systemd: FakeSystemd, write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    with RemoteServer() as remote:
        cfg = write_config(toml.http_sink(remote.url, timeout_s=1))
        # The forwarder's send never returns; its deadline is 1 s, so after 2*1+10 s of one
        # step the agent judges it wedged.
        with start(cfg, relay_env, systemd, RELAY_CRASHPOINT="forwarder.send") as proc:
            wait_until(lambda: "READY=1" in systemd.texts(), 20, "READY=1")
            pushed = time.monotonic()
            relay.push("door opened", config_path=cfg)
            time.sleep(17)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    pings = systemd.times("WATCHDOG=1")
    assert any(t > pushed + 5 for t in pings), "pinged while the step was young"
    assert not any(t > pushed + 14 for t in pings), "still pinging with a wedged forwarder"
    assert remote.received == []


@pytest.mark.slow
def test_sigterm_during_a_backlog_drain(
    systemd: FakeSystemd,
    write_config: Callable[..., Path],
    state_dir: Path,
    relay_env: dict[str, str],
) -> None:
    total = 20_000
    with RemoteServer() as remote:
        cfg = write_config(toml.http_sink(remote.url, batch_max=20))
        with Spool.open(state_dir) as spool:
            spool.register_sinks(["cloud"])
            for i in range(0, total, 1000):
                spool.put_many(
                    [
                        Event.new(node="n", source="test", name="x", payload=n)
                        for n in range(i, i + 1000)
                    ]
                )
        with start(cfg, relay_env, systemd) as proc:
            wait_until(lambda: len(remote.accepted()) > 2000, 60, "the drain to be under way")
            asked = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            took = time.monotonic() - asked
        delivered = len({e["payload"] for e in remote.accepted()})
        assert delivered < total, "the drain finished before the signal: the test proves nothing"
        with start(cfg, relay_env, systemd) as proc:
            wait_until(
                lambda: len({e["payload"] for e in remote.accepted()}) == total,
                120,
                "the rest after the restart",
            )
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    got = [e["payload"] for e in remote.accepted()]
    assert list(dict.fromkeys(got)) == list(range(total))  # none lost, in order
    print(
        f"SIGTERM after {delivered} of {total}: exited in {took:.2f}s; "
        f"{len(got) - total} sent twice (in flight at the stop)"
    )
    assert took < 10


def test_sighup_reloads_the_config(
    systemd: FakeSystemd, write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    with RemoteServer() as first, RemoteServer() as second:
        cfg = write_config(toml.http_sink(first.url, name="one"))
        with start(cfg, relay_env, systemd) as proc:
            wait_until(lambda: "READY=1" in systemd.texts(), 20, "READY=1")
            body = cfg.read_text()
            cfg.write_text(body + toml.http_sink(second.url, name="two"))
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: systemd.texts().count("READY=1") == 2, 20, "READY=1 again")
            relay.push("after reload", config_path=cfg)
            wait_until(lambda: len(second.accepted()) == 1 and len(first.accepted()) == 1, 10)
            # A broken edit is reported and the running config kept.
            good = cfg.with_name("good.toml")
            good.write_text(cfg.read_text())
            cfg.write_text(body + toml.spool(when_full="sometimes"))
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: systemd.texts().count("READY=1") == 3, 20, "READY=1 a third time")
            relay.push("still two sinks", config_path=good)
            wait_until(lambda: len(second.accepted()) == 2, 10)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    assert systemd.texts().count("RELOADING=1") == 2
    assert "STOPPING=1" not in systemd.texts()[:-1]
