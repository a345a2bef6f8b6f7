"""systemd integration: READY / STATUS / WATCHDOG / STOPPING notifications (sd_notify(3)),
and logs to journald with fields (``SINK=``, ``EVENT_ID=``, ``SOURCE=``).

This is the one module that imports systemd-python (the ``relay[systemd]`` extra, which
builds against libsystemd), and only inside functions: relay runs without it, and then

- notifications still work: the protocol is one datagram on an AF_UNIX socket, documented as
  stable, so :class:`Notifier` speaks it itself rather than making readiness and the watchdog
  depend on a C extension being built;
- logs are plain lines on stderr, which journald stores all the same, but without fields;
  :func:`setup_logging` says so once.

The agent's part (see each docstring)::

    notifier = Notifier()
    ... open the spool, start the components ...
    notifier.ready()
    interval = notifier.watchdog_interval()         # None: no watchdog
    while not stop.wait(interval):                  # wakes only for the watchdog
        if every_component_alive_and_progressing():
            notifier.watchdog()
    notifier.stopping()
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

log = logging.getLogger(__name__)

JOURNAL_SOCKET = "/run/systemd/journal/socket"  # where libsystemd sends log entries
HANDLER_NAME = "relay"  # the name of the root handler setup_logging installs
_STATUS_MAX = 200  # characters of STATUS= kept: `systemctl status` shows one line
_SEND_TIMEOUT = 1.0  # seconds a notification may block when systemd's queue is full
_FIELD = re.compile(r"[A-Z][A-Z0-9_]{0,63}")  # a journal field name journald accepts
_DROPPED = frozenset({"MESSAGE", "CODE_ARGS", "EXCEPTION_INFO"})  # see _JournalSender


def _module(name: str) -> Any | None:
    """``systemd.<name>`` from systemd-python, or None when it is not installed."""
    try:
        return importlib.import_module(f"systemd.{name}")
    except ImportError:
        return None


# ------------------------------------------------------------------ sd_notify


class Notifier:
    """Tells systemd what relay is doing. Does nothing unless ``$NOTIFY_SOCKET`` is set (a
    ``Type=notify`` unit), or ``send`` is given (a twin for tests: it receives each message).
    Thread-safe; a failing send is logged once per outage, never raised."""

    def __init__(self, send: Callable[[str], object] | None = None) -> None:
        self._send = send if send is not None else _transport(os.environ.get("NOTIFY_SOCKET"))
        self._interval = _watchdog_interval(os.environ) if self._send is not None else None
        self._status: str | None = None
        self._failing = False
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def ready(self) -> None:
        """Startup is complete (spool open, components started): ``systemctl start`` returns."""
        self._notify("READY=1")

    def status(self, text: str) -> None:
        """The one-line status ``systemctl status relay`` shows; sent only when it changed."""
        # A newline would end the assignment and start another ("WATCHDOG=1", say).
        text = " ".join(text.split())[:_STATUS_MAX]
        with self._lock:
            if text != self._status and self._notify_locked(f"STATUS={text}"):
                self._status = text

    def watchdog(self) -> None:
        """relay is alive and making progress; send every :meth:`watchdog_interval` seconds."""
        self._notify("WATCHDOG=1")

    def reloading(self) -> None:
        """The config is being reloaded (SIGHUP); :meth:`ready` follows when done."""
        self._notify("RELOADING=1")

    def stopping(self) -> None:
        """Shutdown has begun (so a slow drain is not taken for a hang)."""
        self._notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` calls: half of ``$WATCHDOG_USEC``, as sd_watchdog_
        enabled(3) advises. None when the unit has no watchdog, or ``$WATCHDOG_PID`` names
        another process (the variables leaked into a child)."""
        return self._interval

    def _notify(self, message: str) -> None:
        with self._lock:
            self._notify_locked(message)

    def _notify_locked(self, message: str) -> bool:
        if self._send is None:
            return False
        try:
            self._send(message)
        except OSError as exc:
            if not self._failing:
                log.warning("sd_notify failed (%s): systemd may think relay is hung", _why(exc))
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify works again")
            self._failing = False
        return True


def _transport(address: str | None) -> Callable[[str], object] | None:
    if not address:
        return None
    daemon = _module("daemon")
    if daemon is not None:
        # unset_environment=False is systemd-python's default, spelled out: True would unset
        # $NOTIFY_SOCKET after the first message (in C's environ only; os.environ would still
        # show it), and every later READY/WATCHDOG would silently go nowhere.
        return lambda message: daemon.notify(message, unset_environment=False)
    if address[0] not in "/@":  # newer systemd may pass vsock:... for VMs
        log.warning("NOTIFY_SOCKET %r is not a Unix socket; install relay[systemd]", address)
        return None
    # "@name" is a socket in Linux's abstract namespace, which Python spells "\0name".
    target = "\0" + address[1:] if address[0] == "@" else address
    return lambda message: _send_datagram(target, message)


def _send_datagram(target: str, message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram; the kernel adds our credentials."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_SEND_TIMEOUT)
        sock.sendto(message.encode(), target)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
        pid = int(environ.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


def status_text(depths: Mapping[str, int], last_error: str | None = None) -> str:
    """A STATUS= line: ``queued: cloud 0, bus 12; last error: bus: connection refused``."""
    queued = ", ".join(f"{sink} {depth}" for sink, depth in depths.items()) or "no sinks"
    return f"queued: {queued}" + (f"; last error: {last_error}" if last_error else "")


# ------------------------------------------------------------------ logging


def setup_logging(
    level: str, *, stream: TextIO | None = None, journal_socket: str = JOURNAL_SOCKET
) -> logging.Handler:
    """Send every log record at ``level`` ("debug", "info", ...) and above to journald, with
    fields, when ``stream`` (default stderr) is connected to the journal and systemd-python is
    installed; else to ``stream`` as "LEVEL logger: message" lines (no timestamps: journald or
    the terminal has them). Log calls may pass ``extra={"SINK": ..., "EVENT_ID": ...,
    "SOURCE": ...}``: journal fields, ignored by the plain format. Replaces the handler of an
    earlier call; returns the new one."""
    stream = sys.stderr if stream is None else stream
    to_journal = is_journal_stream(stream)
    journal = _module("journal")
    # libsystemd drops entries silently when the socket is missing (sd_journal_sendv returns
    # 0 on ENOENT, "fail silently"), as in a sandbox that hides /run: then write lines.
    socket_there = os.path.exists(journal_socket)
    handler: logging.Handler
    if journal is not None and to_journal and socket_there:
        sender = _JournalSender(journal.send, stream)
        handler = journal.JournalHandler(sender_function=sender, SYSLOG_IDENTIFIER="relay")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_PlainFormatter(priority_prefix=to_journal))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if journal is None:
        under_systemd = to_journal or "NOTIFY_SOCKET" in os.environ
        log.log(
            logging.WARNING if under_systemd else logging.INFO,
            "systemd-python is not installed (relay[systemd]): logging without journal fields",
        )
    elif to_journal and not socket_there:
        log.warning("no journald socket at %s: logging without journal fields", journal_socket)
    return handler


def is_journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is what systemd connected to the journal: ``$JOURNAL_STREAM`` is
    "<device>:<inode>" of that stream (systemd.exec(5)). Being set is not enough: a process
    started from the service with its stderr redirected inherits the variable."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())  # pytest's capture has no fileno: UnsupportedOperation
        return bool(sep) and (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


class _PlainFormatter(logging.Formatter):
    """ "LEVEL logger: message". With ``priority_prefix`` (the stream is the journal), every
    line starts with "<N>", N the syslog priority, which journald reads off a stream
    (sd-daemon(3)), so ``journalctl -p warning`` works without systemd-python."""

    def __init__(self, *, priority_prefix: bool = False) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self._prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self._prefix:
            return text
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def _priority(levelno: int) -> int:
    """The syslog priority of a logging level, as systemd-python's JournalHandler maps it."""
    for limit, priority in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4)):
        if levelno <= limit:
            return priority
    return 3 if levelno <= logging.ERROR else 2


class _JournalSender:
    """``JournalHandler``'s sender_function, for two of its quirks.

    It passes every attribute of the LogRecord as a field (``msg``, ``args``, ``levelname``...
    and whatever ``extra=`` added). journald keeps only names of A-Z, 0-9 and "_" that start
    with a letter, so ``extra={"SINK": name}`` arrives as ``SINK=``; the rest is dropped here
    rather than sent to be ignored, and so are CODE_ARGS and EXCEPTION_INFO: reprs of the raw
    arguments and exception, which repeat MESSAGE and may show more than its "%s" does.

    When the socket refuses an entry (journald restarting, say), ``send`` raises and
    JournalHandler would print a traceback per record; instead the record goes to the stream
    (the journal's stream, so it is kept) as a plain line, and the outage is told once.
    """

    def __init__(self, send: Callable[..., object], stream: TextIO) -> None:
        self._send = send
        self._stream = stream
        self._plain = _PlainFormatter(priority_prefix=True)
        self._failing = False

    def __call__(self, MESSAGE: str, **fields: Any) -> None:  # JournalHandler calls it so
        kept = {k: v for k, v in fields.items() if _FIELD.fullmatch(k) and k not in _DROPPED}
        try:
            self._send(MESSAGE, **kept)
        except OSError as exc:
            lines = [self._plain.format(logging.makeLogRecord(fields))]
            if not self._failing:
                why = f"journald refused a log entry ({_why(exc)}): plain lines until it takes them"
                lines.insert(0, f"<4>WARNING {__name__}: {why}")
            self._failing = True
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        else:
            self._failing = False


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
