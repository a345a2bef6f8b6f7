"""For agent_bench.py: run a program as systemd runs relay (``Type=notify``: a datagram
socket as ``NOTIFY_SOCKET``, the watchdog of systemd/relay.service) and read its /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

WATCHDOG_USEC = "30000000"  # WatchdogSec=30 in systemd/relay.service: a ping every 15 s
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class Notifications:
    """A stand-in for systemd's notify socket; ``ready_at`` is when READY=1 arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)  # how soon close() stops the receiver
        self.ready = threading.Event()
        self.ready_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in data.splitlines() and not self.ready.is_set():
                self.ready_at = time.monotonic()
                self.ready.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    startup_s: float  # from just before fork+exec to READY=1

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def launched(
    name: str, argv: Sequence[str], workdir: Path, timeout: float = 120
) -> Iterator[Launched]:
    """Start ``argv`` under the stand-in, wait for READY=1; SIGTERM it at the end. Its
    output goes to ``workdir/<name>.log``, whose tail a start-up failure shows."""
    notify = Notifications(workdir / f"notify-{time.monotonic_ns()}.sock")
    log_path = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=WATCHDOG_USEC)
    with log_path.open("ab") as log:
        began = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        while not notify.ready.wait(0.5):
            if proc.poll() is not None or time.monotonic() - began > timeout:
                tail = log_path.read_text(errors="replace").splitlines()[-10:]
                raise RuntimeError(f"{name}: no READY=1 (exit {proc.poll()}): {tail}")
        yield Launched(proc, notify.ready_at - began)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        notify.close()


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``, ``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_ticks(pid: int) -> int:
    """utime + stime of every thread so far, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wakeups(pid: int) -> int:
    """Context switches of every thread so far: each is a wake-up or a preemption."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage (counted when it dirtied the
    pages, so a page written twice before writeback counts once; see proc(5))."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise KeyError("write_bytes")
