"""scripts/install into a temporary root (``--root``): a real venv with relay built from this
tree, the unit, the config and the credentials directory with their modes; a second run
changes nothing; the installed relay accepts the installed config; uninstall keeps the spool
unless ``--purge``.

``--root`` creates no user and calls no systemctl, so what only a real system shows (the
relay user, root:relay ownership, daemon-reload) is not covered here. Without libsystemd-dev
(pkg-config finds no libsystemd), ``--root`` installs relay without its systemd extra; both
ways are tested on every machine (the second by hiding libsystemd from pkg-config). The real
system, on an emulated Pi: scripts/check-platform."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.common import REQUIRE_BROKERS

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install"

pytestmark = pytest.mark.slow


def run_install(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )


def libsystemd_found(env: dict[str, str] | None = None) -> bool:
    """Whether scripts/install finds libsystemd (and so builds the systemd extra)."""
    try:
        found = subprocess.run(["pkg-config", "--exists", "libsystemd"], env=env, check=False)
    except FileNotFoundError:
        return False
    return found.returncode == 0


def without_libsystemd(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without libsystemd-dev: pkg-config searches only an empty
    directory (systemd-python's build asks pkg-config too)."""
    empty = tmp_path / "pkgconfig"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PKG_CONFIG_PATH"}
    return {**env, "PKG_CONFIG_LIBDIR": str(empty)}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` outside the venv with its mode and content, plus what the
    venv has installed."""
    seen: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("opt/relay/"):
            continue
        if path.is_symlink():
            seen[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            seen[rel] = f"{mode(path):o} {hashlib.sha256(path.read_bytes()).hexdigest()}"
        else:
            seen[rel] = f"{mode(path):o} dir"
    freeze = subprocess.run(
        [str(root / "opt/relay/bin/pip"), "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    )
    # relay itself is installed again on every run (a source tree may have changed without
    # a new version), from a fresh copy of the tree, which pip freeze names by its URL.
    seen["pip freeze"] = re.sub(r"relay @ file://\S+", "relay @ <copy>", freeze.stdout)
    return seen


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One install into a temporary root, shared by the tests that only look at it."""
    root = tmp_path_factory.mktemp("root")
    result = run_install("--root", root)
    if "missing Debian packages" in result.stderr:
        if REQUIRE_BROKERS:
            pytest.fail(result.stderr.strip())
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "relay install: /etc/relay.toml: config OK" in result.stdout
    # Not the real system: no service to start; where the files are is named with root.
    assert "systemctl" not in result.stdout
    assert f"relay install: --root: into {root};" in result.stdout
    assert f"{root}/opt/relay/bin/relay check-config --config {root}/etc/relay.toml" in (
        result.stdout
    )
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_files_and_modes(root: Path) -> None:
    unit = root / "etc/systemd/system/relay.service"
    config = root / "etc/relay.toml"
    assert unit.read_bytes() == (REPO / "systemd/relay.service").read_bytes()
    assert mode(unit) == 0o644
    assert config.read_bytes() == (REPO / "etc/relay.toml").read_bytes()
    assert mode(config) == 0o640  # it may hold an amqp:// password
    assert (root / "etc/relay").is_dir()
    assert mode(root / "etc/relay") == 0o750
    assert os.access(root / "opt/relay/bin/relay", os.X_OK)
    assert os.readlink(root / "usr/local/bin/relay") == "/opt/relay/bin/relay"
    assert not (root / "var/lib/relay").exists()  # StateDirectory= makes it, owned by relay


def test_the_installed_relay_accepts_the_installed_config(root: Path) -> None:
    python = root / "opt/relay/bin/python"
    # The systemd extra is there when this machine could build it (see the next test).
    imports = "relay, systemd.journal" if libsystemd_found() else "relay"
    where = subprocess.run(
        [str(python), "-c", f"import {imports}; print(relay.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,  # not the repo, whose relay/ would shadow the installed one
    )
    assert where.stdout.startswith(str(root / "opt/relay/lib/")), where.stdout
    check = subprocess.run(
        [
            str(root / "opt/relay/bin/relay"),
            "check-config",
            "--config",
            str(root / "etc/relay.toml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    assert check.returncode == 0, check.stderr
    assert check.stderr.strip().endswith("config OK")


def test_without_libsystemd_dev_root_installs_without_the_systemd_extra(tmp_path: Path) -> None:
    """The real install needs libsystemd-dev (systemd-python compiles against it); a check root
    goes on without the extra, saying so in one line, and relay works there."""
    env = without_libsystemd(tmp_path)
    assert not libsystemd_found(env)
    root = tmp_path / "root"
    result = run_install("--root", root, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    notices = [line for line in result.stdout.splitlines() if "systemd extra" in line]
    assert notices == [
        "relay install: --root: no libsystemd-dev here: installing relay without its systemd extra"
    ]
    assert "relay install: error" not in result.stderr
    assert re.search(
        r"^relay install: installed relay \S+ with \[gpio\] in /opt/relay$", result.stdout, re.M
    ), result.stdout
    assert "relay install: /etc/relay.toml: config OK" in result.stdout
    python = root / "opt/relay/bin/python"
    probe = "import importlib.util as u, relay; print(u.find_spec('systemd') is None)"
    found = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=root
    )
    assert found.stdout.strip() == "True"


def test_a_second_run_changes_nothing_and_keeps_an_edited_config(root: Path) -> None:
    config = root / "etc/relay.toml"
    config.write_text(config.read_text().replace('node = "hall-pi"', 'node = "garage-pi"'))
    before = snapshot(root)
    result = run_install("--root", root)
    assert result.returncode == 0, result.stderr
    assert "relay install: error" not in result.stderr
    assert "kept the existing /etc/relay.toml" in result.stdout
    assert "installed /etc/systemd/system/relay.service" not in result.stdout
    assert "created the venv" not in result.stdout
    assert snapshot(root) == before


def test_install_writes_the_mosquitto_drop_in_when_told(root: Path) -> None:
    """With a Mosquitto in the root: --mosquitto-dropin writes README's drop-in (what the
    script does otherwise: tests/test_mosquitto_dropin.py)."""
    conf_d = root / "etc/mosquitto/conf.d"
    conf_d.mkdir(parents=True)
    (root / "etc/mosquitto/mosquitto.conf").write_text("include_dir /etc/mosquitto/conf.d\n")
    result = run_install("--root", root, "--mosquitto-dropin")
    assert result.returncode == 0, result.stderr
    assert "relay install: wrote /etc/mosquitto/conf.d/relay.conf" in result.stdout
    assert (conf_d / "relay.conf").read_bytes() == (REPO / "etc/mosquitto-relay.conf").read_bytes()


def test_uninstall_keeps_the_spool_and_config_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = {
        "opt/relay/bin/relay": "venv",
        "etc/systemd/system/relay.service": "unit",
        "etc/systemd/system/relay.service.d/override.conf": "drop-in",
        "etc/relay.toml": "config",
        "etc/relay/cloud.token": "secret",
        "var/lib/relay/spool.db": "spool",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/relay").symlink_to("/opt/relay/bin/relay")

    result = run_install("--root", root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / "opt/relay").exists()
    assert not (root / "etc/systemd/system/relay.service").exists()
    assert not (root / "usr/local/bin/relay").is_symlink()
    for kept in ["etc/relay.toml", "etc/relay/cloud.token", "var/lib/relay/spool.db"]:
        assert (root / kept).read_text() == files[kept]

    result = run_install("--root", root, "--uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    for gone in [
        "etc/relay.toml",
        "etc/relay",
        "var/lib/relay",
        "etc/systemd/system/relay.service.d",
    ]:
        assert not (root / gone).exists(), gone


def test_an_unrelated_relay_command_is_left_alone(tmp_path: Path) -> None:
    link = tmp_path / "usr/local/bin/relay"
    link.parent.mkdir(parents=True)
    link.symlink_to("/usr/bin/something-else")
    assert run_install("--root", tmp_path, "--uninstall").returncode == 0
    assert link.is_symlink()


def test_missing_prerequisites_are_named_in_one_line(tmp_path: Path) -> None:
    """On a machine without gcc and pkg-config, the script says which Debian packages to
    install, before changing anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))  # not pyenv's shim
    for tool in ["bash", "dirname", "mkdir"]:
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    result = run_install("--root", tmp_path / "root", env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "relay install: error: missing Debian packages: gcc pkg-config libsystemd-dev "
        "(sudo apt install gcc pkg-config libsystemd-dev)"
    ]
    assert not (tmp_path / "root/opt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus (see --help)"),
        (["--purge"], "--purge goes with --uninstall"),
        (["--root"], "--root needs a directory"),
    ],
)
def test_bad_options_are_one_line(args: list[str], message: str) -> None:
    result = run_install(*args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"relay install: error: {message}"]
