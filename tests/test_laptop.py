"""Trying relay off a Pi (README, "Try it on a laptop"): etc/laptop.toml with the receiver of
scripts/receiver.py, run as the README says; and what `relay run` says first when a config
asks for what this machine does not have."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay import config
from tests.helpers import toml
from tests.helpers.brokers import free_port
from tests.helpers.common import RELAY, about_the_run, read_until
from tests.helpers.wait import wait_until

ROOT = Path(__file__).parent.parent
LAPTOP = ROOT / "etc" / "laptop.toml"
RECEIVER = ROOT / "scripts" / "receiver.py"


def test_the_laptop_config_needs_no_pi() -> None:
    s = config.load(LAPTOP)
    assert s.gpio.pin_factory == "mock"
    assert not s.state_dir.is_absolute()  # the folder relay is started from
    assert [sink.url for sink in s.sinks] == ["http://127.0.0.1:8080/events"]  # type: ignore[union-attr]
    # No secret in it: relay run takes it as a checkout made it (unless its umask let the
    # group write it, which the file's header says how to fix).
    assert not any("secret" in line for line in config.permission_problems(LAPTOP))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """scripts/receiver.py on a free port; its port and the file its output goes to."""
    port, out = free_port(), tmp_path / "received.txt"
    with (
        out.open("w") as f,
        subprocess.Popen(
            [sys.executable, str(RECEIVER), "--port", str(port)], stdout=f, stderr=f
        ) as proc,
    ):
        wait_until(lambda: "receiving" in out.read_text(), 10, "the receiver")
        yield port, out
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(10)
        finally:
            proc.kill()  # else the with block waits for it for ever
        assert code == 0


def test_readme_walk_through(
    tmp_path: Path, receiver: tuple[int, Path], relay_env: dict[str, str]
) -> None:
    port, received = receiver
    cfg = tmp_path / "laptop.toml"
    cfg.write_text(LAPTOP.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    cfg.chmod(0o600)
    relay_env["RELAY_CONFIG"] = str(cfg)

    def relay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RELAY, *args], cwd=tmp_path, env=relay_env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    with subprocess.Popen(
        [*RELAY, "run"], cwd=tmp_path, env=relay_env, stderr=subprocess.PIPE, text=True
    ) as agent:
        read_until(agent, "relay started")
        pushed = relay("push", "door opened", "--payload", '{"state": "open"}')
        assert pushed.returncode == 0, pushed.stderr
        wait_until(lambda: pushed.stdout.strip() in received.read_text(), 20, "the event")
        lamp = relay("command", "lamp", "pulse", "--wait")
        assert (lamp.returncode, lamp.stdout.splitlines()[-1]) == (0, "ok"), lamp.stderr
        status = relay("status")
        assert status.returncode == 0 and "local" in status.stdout
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    assert (tmp_path / "relay-state" / "spool.db").exists()


def test_run_names_the_cause_first(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    """etc/relay.toml on a laptop: the pin library is missing. The first line says so,
    naming the file and the key, before anything else (it came after "stopping")."""
    cfg = write_config(toml.gpio("lgpio"), toml.gpio_source(17, "door"))
    done = subprocess.run(
        [*RELAY, "run", "--config", str(cfg)],
        env=relay_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 78, done.stderr
    first = about_the_run(done.stderr.splitlines())[0]
    assert first.startswith(f"CRITICAL relay: {cfg}: gpio.pin_factory: 'lgpio' "), done.stderr
    assert "stopping" not in done.stderr
