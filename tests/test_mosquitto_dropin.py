"""scripts/mosquitto-dropin, which scripts/install runs: README's drop-in for a Mosquitto on the
same box, written only when asked (a terminal, or --yes) and only where it changes nothing
someone chose; never a second copy, never over a file of the user's; removed on purge only if
it is still ours. Each case is a temporary root (``--root``) holding a Mosquitto config."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from tests.test_mosquitto_conf import readme_dropin

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "mosquitto-dropin"
OURS = REPO / "etc" / "mosquitto-relay.conf"
DEBIAN = (  # Debian 12's /etc/mosquitto/mosquitto.conf
    "pid_file /run/mosquitto/mosquitto.pid\n"
    "persistence true\n"
    "persistence_location /var/lib/mosquitto/\n"
    "log_dest file /var/log/mosquitto/mosquitto.log\n"
    "include_dir /etc/mosquitto/conf.d\n"
)


def mosquitto(root: Path, conf: str = DEBIAN) -> Path:
    """A Mosquitto config in ``root``; the drop-in's path there."""
    (root / "etc/mosquitto/conf.d").mkdir(parents=True)
    (root / "etc/mosquitto/mosquitto.conf").write_text(conf)
    return root / "etc/mosquitto/conf.d/relay.conf"


def run(root: Path, *args: str) -> list[str]:
    """The script's lines, stdin not a terminal; it must succeed."""
    done = subprocess.run(
        [str(SCRIPT), "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert not done.stderr
    return done.stdout.splitlines()


def answered(root: Path, answer: str) -> str:
    """The script run on a terminal that answers ``answer``; what the terminal showed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(SCRIPT), "--root", str(root)], stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    os.write(leader, f"{answer}\n".encode())
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the script exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.wait(30) == 0, shown
    return shown.decode()


def test_the_file_is_readmes_drop_in() -> None:
    assert OURS.read_text() == readme_dropin()


def test_without_mosquitto_it_does_nothing(tmp_path: Path) -> None:
    assert run(tmp_path, "--yes") == []
    assert list(tmp_path.iterdir()) == []


def test_without_a_terminal_it_only_says_what_it_would_write(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path)
    [line] = run(tmp_path)
    assert line.startswith("relay install: Mosquitto is installed: sudo scripts/mosquitto-dropin")
    assert "/etc/mosquitto/conf.d/relay.conf" in line and "'The broker'" in line
    assert not dropin.exists()


@pytest.mark.parametrize(("answer", "written"), [("y", True), ("", False), ("n", False)])
def test_on_a_terminal_it_asks(tmp_path: Path, answer: str, written: bool) -> None:
    dropin = mosquitto(tmp_path)
    shown = answered(tmp_path, answer)
    assert "write /etc/mosquitto/conf.d/relay.conf so that Mosquitto keeps" in shown
    assert "[y/N]" in shown
    assert dropin.exists() == written
    if written:
        assert dropin.read_bytes() == OURS.read_bytes()
        assert "sudo systemctl restart mosquitto" in shown  # said, not done
    else:
        assert "left Mosquitto's config alone" in shown


def test_yes_writes_it_once(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path)
    [line] = run(tmp_path, "--yes")
    assert line == (
        "relay install: wrote /etc/mosquitto/conf.d/relay.conf; Mosquitto reads it at: "
        "sudo systemctl restart mosquitto"
    )
    assert dropin.read_bytes() == OURS.read_bytes()
    assert dropin.stat().st_mode & 0o777 == 0o644
    assert run(tmp_path, "--yes") == []  # there already: nothing to say


def test_a_users_relay_conf_is_kept(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path)
    dropin.write_text("max_queued_messages 5000000\n")
    [line] = run(tmp_path, "--yes")
    assert "kept your /etc/mosquitto/conf.d/relay.conf" in line
    assert dropin.read_text() == "max_queued_messages 5000000\n"


def test_a_value_someone_set_stays(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path)
    (dropin.parent / "local.conf").write_text("# mine\nmax_queued_bytes 1000000000\n")
    [line] = run(tmp_path, "--yes")
    assert line == (
        "relay install: Mosquitto's config sets max_queued_bytes in "
        "/etc/mosquitto/conf.d/local.conf already: left it alone; README, 'The broker', says "
        "what relay needs"
    )
    assert not dropin.exists()


def test_a_config_without_the_drop_in_directory_is_told_what_to_do(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path, "listener 1883\nallow_anonymous true\n")
    [line] = run(tmp_path, "--yes")
    assert "does not read /etc/mosquitto/conf.d: add the lines of etc/mosquitto-relay.conf" in line
    assert not dropin.exists()


def test_remove_takes_only_ours(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path)
    run(tmp_path, "--yes")
    [line] = run(tmp_path, "--remove")
    assert line.startswith("relay install: removed /etc/mosquitto/conf.d/relay.conf")
    assert not dropin.exists()
    dropin.write_text("max_queued_messages 5000000\n")  # the user's own
    assert run(tmp_path, "--remove") == []
    assert dropin.exists()


def test_uninstall_purge_removes_ours(tmp_path: Path) -> None:
    dropin = mosquitto(tmp_path)
    run(tmp_path, "--yes")
    done = subprocess.run(
        [str(REPO / "scripts/install"), "--root", str(tmp_path), "--uninstall", "--purge"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "removed /etc/mosquitto/conf.d/relay.conf" in done.stdout
    assert not dropin.exists()
    assert (tmp_path / "etc/mosquitto/mosquitto.conf").exists()
