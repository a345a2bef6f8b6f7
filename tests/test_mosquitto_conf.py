"""`relay check-config` and a Mosquitto on the same box: the settings that lose messages meant
for relay are warned about, read from generated Mosquitto configs the way Mosquitto reads
them (include_dir, the last value wins); README's drop-in silences them; a config relay may
not read is one line, not a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.mqtt import mosquitto
from tests.helpers.common import RELAY

README = Path(__file__).parent.parent / "README.md"
DEBIAN = (  # Debian 12's /etc/mosquitto/mosquitto.conf, as the package ships it
    "pid_file /run/mosquitto/mosquitto.pid\n"
    "persistence true\n"
    "persistence_location /var/lib/mosquitto/\n"
    "log_dest file /var/log/mosquitto/mosquitto.log\n"
    "include_dir {conf_d}\n"
)


def readme_dropin() -> str:
    """The drop-in README tells users to write to /etc/mosquitto/conf.d/relay.conf."""
    text = README.read_text()
    found = re.search(r"```\n(# /etc/mosquitto/conf\.d/relay\.conf\n.*?)```", text, re.DOTALL)
    assert found, "README has no drop-in for /etc/mosquitto/conf.d/relay.conf"
    return found[1]


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A directory every user may read (a test runs check-config as another user)."""
    d = Path(tempfile.mkdtemp(prefix="relay-mosquitto-"))
    d.chmod(0o755)
    (d / "conf.d").mkdir()
    yield d
    shutil.rmtree(d)


def debian(d: Path, dropin: str | None = None) -> Path:
    conf = d / "mosquitto.conf"
    conf.write_text(DEBIAN.format(conf_d=d / "conf.d"))
    if dropin is not None:
        (d / "conf.d" / "relay.conf").write_text(dropin)
    return conf


def test_the_defaults_lose_messages(broker_dir: Path) -> None:
    conf = broker_dir / "mosquitto.conf"
    conf.write_text("listener 1883 127.0.0.1\nallow_anonymous true\n")
    found = mosquitto.problems(conf)
    assert len(found) == 2, found
    assert found[0].startswith(f"{conf}: max_queued_messages is 1000: ")
    assert "persistence is off" in found[1]
    assert all("The broker" in line for line in found)


def test_debian_keeps_the_session_but_not_the_queue(broker_dir: Path) -> None:
    [found] = mosquitto.problems(debian(broker_dir))
    assert "max_queued_messages is 1000" in found


def test_the_readme_dropin_is_enough(broker_dir: Path) -> None:
    conf = debian(broker_dir, readme_dropin())
    assert mosquitto.problems(conf) == []
    settings = mosquitto.read(conf)
    assert settings.persistence and settings.max_queued_messages > 100_000
    assert settings.max_queued_bytes >= 16 * 1024 * 1024


def test_the_last_value_wins_and_small_bounds_are_found(broker_dir: Path) -> None:
    conf = debian(
        broker_dir,
        "# relay\nmax_queued_messages 100\nmax_queued_messages 500000\n"
        "max_queued_bytes 65536\nsys_interval 0\n",
    )
    found = mosquitto.problems(conf)
    assert [line.split(": ", 1)[1].split(" ")[0] for line in found] == [
        "max_queued_bytes",
        "sys_interval",
    ], found


def check_config(d: Path, conf: Path, *user: str) -> subprocess.CompletedProcess[str]:
    cfg = d / "relay.toml"
    cfg.write_text(
        f'node = "t"\nstate_dir = "{d / "state"}"\n'
        f'[mqtt]\nhost = "localhost"\nbroker_config = "{conf}"\n'
        '[[sources]]\ntype = "mqtt"\ntopics = ["home/#"]\n'
    )
    cfg.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [*user, *RELAY, "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def warnings(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("relay: warning: ")]


def test_check_config_warns_and_passes(broker_dir: Path) -> None:
    done = check_config(broker_dir, debian(broker_dir))
    assert done.returncode == 0, done.stderr
    [line] = warnings(done)
    assert "max_queued_messages is 1000" in line
    silent = check_config(broker_dir, debian(broker_dir, readme_dropin()))
    assert silent.returncode == 0 and warnings(silent) == [], silent.stderr


def test_a_broker_config_relay_may_not_read_is_one_line(broker_dir: Path) -> None:
    """As root, chmod proves nothing: run check-config as the user nobody."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run as another user")
    conf = debian(broker_dir)
    conf.chmod(0o600)  # root's only
    done = check_config(
        broker_dir, conf, setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"
    )
    assert done.returncode == 0, done.stderr
    [line] = warnings(done)
    assert f"{conf}: cannot read the broker's config (Permission denied)" in line
