"""P8: a corrupt spool at start is moved aside and reported once at CRITICAL; the agent runs."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.event import Event
from relay.spool import Spool
from tests.helpers.common import RELAY


def _fill(state_dir: Path, n: int = 3000) -> None:
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["a"])
        spool.put_many(
            [Event.new(node="c", source="test", name="x", payload="p" * 200) for _ in range(n)]
        )


def _run_agent_until_started(config: Path, env: dict[str, str]) -> str:
    """Start `relay run`, wait for its start-up line, stop it with SIGTERM; return stderr."""
    with subprocess.Popen(
        [*RELAY, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "relay started" in line:
                proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
    return "".join(lines)


def _corrupt_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"this is not sqlite at all")


def _truncate(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def _garble_pages(db: Path) -> None:
    with db.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 4))


@pytest.mark.parametrize("damage", [_corrupt_header, _truncate, _garble_pages])
def test_corrupt_spool_is_set_aside(
    damage: Callable[[Path], None],
    write_config: Callable[..., Path],
    state_dir: Path,
    relay_env: dict[str, str],
) -> None:
    _fill(state_dir)
    damage(state_dir / "spool.db")
    err = _run_agent_until_started(write_config(), relay_env)
    critical = [line for line in err.splitlines() if line.startswith("CRITICAL")]
    assert len(critical) == 1, err
    assert "is corrupt" in critical[0] and "moved it to" in critical[0]
    aside = list(state_dir.glob("spool.db.corrupt-*"))
    assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))], err
    with Spool.open(state_dir, check=True) as spool:  # the fresh spool works
        spool.register_sinks(["a"])
        spool.put(Event.new(node="c", source="test", name="after", payload=None))
        assert spool.stats().rows == 1


def test_stray_wal_without_its_database_is_set_aside(
    write_config: Callable[..., Path], state_dir: Path, relay_env: dict[str, str], tmp_path: Path
) -> None:
    # A -wal left behind by another database (its file deleted by hand, say).
    other = tmp_path / "other"
    other.mkdir()
    spool = Spool.open(other)
    spool.register_sinks(["a"])
    spool.put(Event.new(node="c", source="test", name="x", payload=None))
    (state_dir / "spool.db-wal").write_bytes((other / "spool.db-wal").read_bytes())
    spool.close()
    err = _run_agent_until_started(write_config(), relay_env)
    critical = [line for line in err.splitlines() if line.startswith("CRITICAL")]
    assert len(critical) == 1 and "without its database" in critical[0], err
    assert list(state_dir.glob("spool.db-wal.stray-*"))


def test_healthy_spool_is_kept(
    write_config: Callable[..., Path], state_dir: Path, relay_env: dict[str, str]
) -> None:
    _fill(state_dir, 10)
    err = _run_agent_until_started(write_config(), relay_env)
    assert "CRITICAL" not in err
    assert not list(state_dir.glob("spool.db.corrupt-*"))
    assert "10 events queued" in err


def test_unchecked_open_of_a_corrupt_file_is_a_clear_error(state_dir: Path) -> None:
    _fill(state_dir, 10)
    _corrupt_header(state_dir / "spool.db")
    with pytest.raises(SpoolError, match="not a database"):
        Spool.open(state_dir)
