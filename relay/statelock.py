"""The agent's lock on its state directory, ``<state_dir>/relay.lock``: one agent per spool,
and how a client tells whether an agent runs there.

The agent holds an exclusive ``flock`` on the file for as long as it runs, from before it
opens the spool (a wait for a full disk included) until after it has closed it; the file
holds its pid, for the message a second agent gets. The kernel drops the lock when the
process dies, however it dies, so a lock held is an agent alive. A client (``relay command
--wait``) probes it with a shared lock that it drops at once; the agent, which may be
starting at that very moment, tries again for a moment before it takes a probe for another
agent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import IO

from relay.errors import AlreadyRunning, DiskUnavailable, SpoolError
from relay.spool.file import disk_trouble

NAME = "relay.lock"
PROBE_GRACE_S = 0.5  # longer than any probe holds the lock (microseconds)


def take(state_dir: Path) -> IO[str]:
    """Hold ``<state_dir>/relay.lock`` for the agent's lifetime (close the file to let go);
    ``AlreadyRunning`` if another agent holds it, ``DiskUnavailable``/``SpoolError`` if the
    directory cannot be used."""
    try:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        f = (state_dir / NAME).open("a+")
    except OSError as exc:
        message = f"cannot use state_dir {state_dir}: {exc.strerror}"
        raise (DiskUnavailable if disk_trouble(state_dir) else SpoolError)(message) from None
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:  # a client's probe, gone within microseconds
                time.sleep(0.01)
                continue
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise AlreadyRunning(f"another relay (pid {pid}) is running with state_dir {state_dir}")
    with contextlib.suppress(OSError):
        f.truncate(0)
        # Unbuffered: on a full disk a buffered write would fail again at close(), and
        # raise from the agent's clean-up.
        os.write(f.fileno(), f"{os.getpid()}\n".encode())
    return f


def held(state_dir: Path) -> bool | None:
    """Whether an agent runs on ``state_dir`` now; None when this process cannot tell (it
    may not read the lock file)."""
    try:
        f = (state_dir / NAME).open("r")
    except FileNotFoundError:
        return False  # no agent ever ran here
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False  # and closing the file lets go of the probe's lock at once
