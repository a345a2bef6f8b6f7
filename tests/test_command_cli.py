"""``relay command`` as a script uses it: with the agent stopped it says so at once, and the
same id sent again (a retry) is not a failure. No broker needed: the device is an HTTP
service on loopback, and the agent runs in-process on the same state directory."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay import statelock
from relay.agent import Agent
from relay.config import load
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent
from tests.helpers.common import RELAY
from tests.helpers.http_server import RemoteServer
from tests.helpers.wait import wait_until


@pytest.fixture
def device() -> Iterator[RemoteServer]:
    with RemoteServer() as server:
        yield server


@pytest.fixture
def cfg(write_config: Callable[..., Path], device: RemoteServer) -> Path:
    return write_config(
        toml.commands(ttl_s=30, timeout_s=5),
        toml.http_device(device.url, name="heater", actions=["on", "off"]),
    )


def command(cfg: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, "command", "heater", "on", *args, "--config", str(cfg)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def state(state_dir: Path, command_id: str) -> str | None:
    with Spool.open(state_dir) as spool:
        found = spool.command_state(command_id)
    return None if found is None else found[0]


def test_wait_with_the_agent_stopped_says_so_at_once(
    cfg: Path, relay_env: dict[str, str], state_dir: Path
) -> None:
    began = time.monotonic()
    done = command(cfg, relay_env, "--id", "c1", "--wait")
    took = time.monotonic() - began
    assert done.returncode == 1
    assert done.stdout == "c1\n"
    [line] = done.stderr.splitlines()
    assert line.startswith("relay command: relay is not running (state_dir ")
    assert "command c1 stays queued" in line
    assert took < 10, f"{took:.1f}s"  # at once: the probe of the lock, not a timeout
    assert state(state_dir, "c1") == "queued"


def test_wait_returns_the_outcome_with_the_agent_running(
    cfg: Path, relay_env: dict[str, str], device: RemoteServer
) -> None:
    with running_agent(cfg):
        done = command(cfg, relay_env, "--id", "c2", "--wait")
    assert (done.returncode, done.stdout, done.stderr) == (0, "c2\nok\n", "")
    assert len(device.received) == 1


def test_the_same_id_again_is_not_a_failure(
    cfg: Path, relay_env: dict[str, str], state_dir: Path, device: RemoteServer
) -> None:
    first = command(cfg, relay_env, "--id", "c3")
    again = command(cfg, relay_env, "--id", "c3")
    assert (first.returncode, first.stdout, first.stderr) == (0, "c3\n", "")
    assert (again.returncode, again.stdout) == (0, "c3\n")
    assert again.stderr == "relay command: command c3 is queued already: not queued again\n"
    with running_agent(cfg):
        wait_until(lambda: state(state_dir, "c3") == "done", 20, "the command's outcome")
        ran = command(cfg, relay_env, "--id", "c3")
        waited = command(cfg, relay_env, "--id", "c3", "--wait")
    assert (ran.returncode, ran.stdout) == (0, "c3\n")
    assert ran.stderr == "relay command: command c3 ran already: ok: not queued again\n"
    assert (waited.returncode, waited.stdout) == (0, "c3\nok\n")  # its outcome, as --wait says
    assert len(device.received) == 1  # run once


def test_the_lock_says_whether_an_agent_runs(cfg: Path, state_dir: Path) -> None:
    assert statelock.held(state_dir) is False  # never ran
    with running_agent(cfg):
        assert statelock.held(state_dir) is True
    assert statelock.held(state_dir) is False


def test_probes_do_not_keep_an_agent_from_starting(cfg: Path, state_dir: Path) -> None:
    """A client probing the lock in a loop while agents start and stop: each still starts
    (the probe holds the lock for microseconds; the agent tries again for a moment)."""
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            statelock.held(state_dir)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(20):
            agent = Agent(load(cfg))
            agent.open()  # takes the lock; AlreadyRunning if a probe were taken for an agent
            agent.stop()
    finally:
        stop.set()
        prober.join()
