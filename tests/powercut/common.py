"""What the power-cut harness's build steps share: where the cache is, how a step runs, the
guest's fixed addresses and paths."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST_IP = "10.0.2.15"  # qemu user-mode networking's guest address; the host is 10.0.2.2
HOST_IP = "10.0.2.2"  # the host's loopback, as the guest reaches it
STATE_DIR = "/var/lib/relay"  # relay's state_dir in the guest: the data disk's mount point


class ImageError(RuntimeError):
    """The guest cannot be built here; the message says why (for a skip or a failure)."""


def cache_dir() -> Path:
    """``$RELAY_POWERCUT_CACHE``, else ``$XDG_CACHE_HOME/relay-powercut`` (``~/.cache``):
    outside the checkout, so that it survives a fresh clone (CI)."""
    if os.environ.get("RELAY_POWERCUT_CACHE"):
        return Path(os.environ["RELAY_POWERCUT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "relay-powercut"


def run_step(argv: Sequence[str | Path], what: str, **kw: object) -> str:
    """Run a build step; its stdout. A failure raises :class:`ImageError` with the output."""
    done = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise ImageError(f"{what} failed ({done.returncode}):\n{tail}")
    return str(done.stdout)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two runs (CI and a developer) build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def say(log: io.TextIOBase | None, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)
