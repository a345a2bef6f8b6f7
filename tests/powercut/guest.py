"""The guest machine: qemu booting the images of :mod:`tests.powercut.image`, its serial
console read line by line, and its power pulled with SIGKILL.

A power cut here is ``kill -9`` of the qemu process: the guest's RAM (its page cache, the
writes its kernel had not yet sent to the disk) is gone; what the guest's kernel had sent to
its virtio disk was written by qemu to the image file (``cache=writeback``: through the host's
page cache, which outlives qemu), and a FLUSH the guest waited for reached the image before
the guest went on. So the image after the kill is what a disk holds after a power cut with a
drive that honours flushes.

:func:`spool_after_cut` reads the spool the way the next boot will find it: from a copy of
the data disk whose ext4 journal ``e2fsck`` has replayed (as the guest's mount would), out
through ``debugfs`` (no loop device, no mount), opened by SQLite on the host (which recovers
the WAL as relay will). Doing this on the host keeps the verdict independent of the guest.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from tests.fault.harness import integrity_check
from tests.powercut.common import ImageError
from tests.powercut.image import GuestImage


@dataclass(frozen=True)
class ConsoleLine:
    """One line of the serial console: when it arrived (monotonic), in which boot."""

    at: float
    boot: int
    text: str


class Guest:
    """One virtual machine, booted again and again on the same disks.

    ``boot()`` starts qemu (power on), ``cut()`` kills it (power off without warning). The
    console of every boot is kept in :attr:`lines` and written to ``console-<boot>.log``
    in ``workdir``. Use as a context manager: a running guest is killed at the end.
    """

    def __init__(
        self, image: GuestImage, workdir: Path, *, memory_mb: int = 512, cpus: int = 2
    ) -> None:
        self.image = image
        self.workdir = workdir
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.lines: list[ConsoleLine] = []
        self.boots = 0
        self.powered_on_at = 0.0  # monotonic, of the current (or last) boot
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()

    def argv(self) -> list[str]:
        """The qemu command line. TCG, not KVM: Debian's kernel hangs under this machine's
        nested KVM ("Probing EDD"); TCG boots it."""
        img = self.image
        return [
            "qemu-system-x86_64",
            "-accel", "tcg",
            "-nodefaults",
            "-display", "none",
            "-no-reboot",  # a reboot or a panic (panic=-1) ends qemu: the host notices
            "-m", str(self.memory_mb),
            "-smp", str(self.cpus),
            "-kernel", str(img.kernel),
            "-initrd", str(img.initrd),
            "-append", "console=ttyS0 quiet panic=-1 systemd.show_status=0",
            "-drive", f"file={img.root},if=virtio,format=raw,readonly=on",
            "-drive", f"file={img.data},if=virtio,format=raw,cache=writeback",
            "-netdev", "user,id=net0",
            "-device", "virtio-net-pci,netdev=net0",
            "-serial", "stdio",
            "-monitor", "none",
        ]  # fmt: skip

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def boot(self) -> int:
        """Power on; the index in :attr:`lines` where this boot's console starts."""
        if self.running:
            raise RuntimeError("the guest is already running")
        self._reap()
        with self._changed:
            mark = len(self.lines)
            self.boots += 1
            boot = self.boots
        log = open(self.workdir / f"console-{boot:03d}.log", "wb")  # noqa: SIM115 (the reader closes it)
        self.powered_on_at = time.monotonic()
        self._proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout, boot, log), daemon=True
        )
        self._reader.start()
        return mark

    def _read(self, stream: IO[bytes], boot: int, log: IO[bytes]) -> None:
        with log:
            for raw in stream:
                log.write(raw)
                log.flush()
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                line = ConsoleLine(time.monotonic(), boot, _ANSI.sub("", text))
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def cut(self) -> float:
        """Pull the power: SIGKILL qemu and reap it; the monotonic time of the kill."""
        if self._proc is None:
            raise RuntimeError("cut(): the guest was never booted")
        at = time.monotonic()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._reap()
        return at

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.wait()
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        if proc.stdout is not None:
            proc.stdout.close()

    def wait_line(self, pattern: str, timeout: float, *, since: int = 0) -> ConsoleLine:
        """The first console line from index ``since`` on containing ``pattern``; waits
        up to ``timeout``. Raises TimeoutError (with the console's tail), also when qemu
        exits first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if pattern in line.text:
                        return line
                left = deadline - time.monotonic()
                gone = self._proc is None or (
                    self._proc.poll() is not None
                    and (self._reader is None or not self._reader.is_alive())
                )
                if left <= 0 or gone:
                    why = f"{timeout:g}s passed" if left <= 0 else "qemu exited"
                    raise TimeoutError(
                        f"{why} waiting for {pattern!r} on the guest's console\n" + self.tail()
                    )
                self._changed.wait(min(left, 0.2))

    def find_all(self, pattern: str, since: int = 0) -> list[ConsoleLine]:
        with self._changed:
            return [line for line in self.lines[since:] if pattern in line.text]

    def tail(self, n: int = 30) -> str:
        lines = self.lines[-n:]
        return "--- guest console (tail) ---\n" + "\n".join(
            f"[boot {line.boot}] {line.text}" for line in lines
        )

    def close(self) -> None:
        """Kill qemu if it runs. Idempotent."""
        if self._proc is not None:
            self.cut()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ------------------------------------------------------------------------------ the spool


@dataclass
class SpoolAfterCut:
    """The spool file as a power cut left it (what the next boot opens).

    ``rows`` are ``(seq, n)`` of the events in the spool whose payload holds a number;
    ``cursor`` is the HTTP sink's: rows above it were not yet delivered (as far as the
    spool knows). ``fsck`` is e2fsck's verdict on the data disk after its journal replay.
    """

    integrity: str
    fsck: str
    rows: list[tuple[int, int]] = field(default_factory=list)
    cursor: int = 0
    exists: bool = True
    note: str = ""  # what else the spool showed ("no schema on disk yet")

    def undelivered(self) -> set[int]:
        return {n for seq, n in self.rows if seq > self.cursor}


def spool_after_cut(data_img: Path, scratch: Path, sink: str = "cloud") -> SpoolAfterCut:
    """Copy ``data_img``, let e2fsck replay its journal, take the spool files out with
    debugfs and check them with SQLite (``PRAGMA integrity_check``, rows, the cursor)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    copy = scratch / "data.img"
    subprocess.run(["cp", "--sparse=always", str(data_img), str(copy)], check=True)
    fsck = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True, check=False)
    # 0: clean; 1: fixed (a replayed journal counts); anything else is a broken file system.
    verdict = "ok" if fsck.returncode in (0, 1) else f"e2fsck exit {fsck.returncode}"
    if fsck.returncode not in (0, 1):
        verdict += ": " + " | ".join(fsck.stdout.splitlines()[-5:])
    state = scratch / "state"
    state.mkdir()
    listing = _debugfs(copy, "ls -p /")
    names = {part.split("/")[5] for part in listing.splitlines() if part.count("/") >= 6}
    if "spool.db" not in names:
        return SpoolAfterCut(integrity="no spool yet", fsck=verdict, exists=False)
    for name in ("spool.db", "spool.db-wal"):
        if name in names:
            _debugfs(copy, f"dump /{name} {state / name}")
    snap = SpoolAfterCut(integrity=integrity_check(state), fsck=verdict)
    conn = sqlite3.connect(f"file:{state / 'spool.db'}?mode=ro", uri=True, timeout=10)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"events", "sinks"} <= tables:  # the cut came before the schema was on disk
            snap.note = "no schema on disk yet"
            return snap
        for seq, body in conn.execute("SELECT seq, body FROM events"):
            payload = json.loads(body).get("payload")
            n = payload.get("n") if isinstance(payload, dict) else None
            if isinstance(n, int):
                snap.rows.append((int(seq), n))
        found = conn.execute("SELECT cursor FROM sinks WHERE name = ?", (sink,)).fetchone()
        snap.cursor = int(found[0]) if found else 0
    finally:
        conn.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return snap


def _debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ImageError(f"debugfs -R {request!r}: {done.stderr.strip()}")
    return done.stdout
