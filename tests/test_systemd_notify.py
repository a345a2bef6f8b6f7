"""relay.systemd: sd_notify datagrams on a real AF_UNIX socket, the watchdog interval, and the
logging setup with and without journald and systemd-python.

The notify tests run twice: through systemd-python's ``systemd.daemon.notify`` (libsystemd)
and through relay's own datagram client, used when systemd-python is not installed. There is
no journald here, so the journald tests check the decision and the fields handed to
``systemd.journal.send``, faked at that seam."""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.systemd import Notifier, is_journal_stream, setup_logging, status_text
from tests.helpers.common import REQUIRE_BROKERS

Received = Callable[[], list[bytes]]


def need_systemd_python() -> Any:
    try:
        from systemd import daemon, journal
    except ImportError:
        reason = (
            "systemd-python is not installed: it builds against libsystemd (apt install "
            "libsystemd-dev pkg-config, then make clean, or pip install -e '.[systemd]')"
        )
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; CI must exercise the real library")
        pytest.skip(reason)
    return daemon, journal


@pytest.fixture
def no_systemd_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if systemd-python were not installed. The submodules too: a cached
    ``systemd.daemon`` would be imported even with its parent set to None."""
    for name in ("systemd", "systemd.daemon", "systemd.journal"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(params=["libsystemd", "own-client"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "libsystemd":
        need_systemd_python()
    else:
        request.getfixturevalue("no_systemd_python")
    return str(request.param)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="relay-sd-") as d:
        yield Path(d)


def listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            return got


@pytest.fixture
def received(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Received]:
    """A notify socket like systemd's, named by $NOTIFY_SOCKET; returns what arrived."""
    path = short_dir / "notify"
    with listen(str(path)) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield lambda: drain(sock)


# ------------------------------------------------------------------ sd_notify


def test_each_call_sends_its_datagram(backend: str, received: Received) -> None:
    n = Notifier()
    assert n.enabled
    n.ready()
    n.status("queued: bus 3")
    n.watchdog()
    n.stopping()
    assert received() == [b"READY=1", b"STATUS=queued: bus 3", b"WATCHDOG=1", b"STOPPING=1"]


def test_status_is_sent_only_when_it_changes(backend: str, received: Received) -> None:
    n = Notifier()
    for text in ["a", "a", "b", "b", "a"]:
        n.status(text)
    assert received() == [b"STATUS=a", b"STATUS=b", b"STATUS=a"]


def test_status_stays_one_assignment(backend: str, received: Received) -> None:
    n = Notifier()
    n.status("cannot connect:\nWATCHDOG=1\r\n  READY=1")  # say, an error text from a broker
    n.status("x" * 1000)
    assert received() == [b"STATUS=cannot connect: WATCHDOG=1 READY=1", b"STATUS=" + b"x" * 200]


def test_abstract_namespace_socket(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"relay-test-{uuid.uuid4().hex}"
    with listen("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready()
        assert drain(sock) == [b"READY=1"]


def test_nothing_without_notify_socket(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier()
    assert not n.enabled
    assert n.watchdog_interval() is None  # no one to ping
    n.ready()
    n.status("x")
    n.watchdog()
    n.stopping()


def test_a_failing_send_is_logged_once_and_never_raised(
    backend: str, short_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_dir / "notify"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # systemd gone: nothing listens there
    n = Notifier()
    with caplog.at_level(logging.INFO, logger="relay.systemd"):
        n.status("queued: bus 1")
        for _ in range(3):
            n.watchdog()
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "sd_notify failed (No such file or directory)" in caplog.text
        with listen(str(path)) as sock:
            n.status("queued: bus 1")  # not sent before, so not a duplicate
            n.watchdog()
            assert drain(sock) == [b"STATUS=queued: bus 1", b"WATCHDOG=1"]
        assert [r.getMessage() for r in caplog.records][1:] == ["sd_notify works again"]


def test_own_client_refuses_an_address_it_cannot_speak_to(
    no_systemd_python: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # systemd 254+ in a VM
    assert not Notifier().enabled
    assert "is not a Unix socket; install relay[systemd]" in caplog.text


def test_libsystemd_is_used_when_installed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    need_systemd_python()
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")  # sd_notify: EINVAL; ours: refused
    n = Notifier()
    assert n.enabled
    n.ready()
    assert "sd_notify failed (Invalid argument)" in caplog.text


def test_hiding_systemd_python_hides_it(no_systemd_python: None) -> None:
    from relay.systemd import _module

    assert _module("daemon") is None
    assert _module("journal") is None


def test_an_injected_send_is_the_twin_for_tests() -> None:
    sent: list[str] = []
    n = Notifier(send=sent.append)
    n.ready()
    n.status("s")
    n.status("s")
    n.stopping()
    assert n.enabled
    assert sent == ["READY=1", "STATUS=s", "STOPPING=1"]


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "other", None),  # the variables leaked into another process
        ("0", None, None),
        ("", None, None),
        ("thirty", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    received: Received,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    interval: float | None,
) -> None:
    own = os.getpid()
    pids = {"self": str(own), "other": str(own + 1), None: None}
    for name, value in [("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pids[pid])]:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert Notifier().watchdog_interval() == interval


def test_status_text() -> None:
    assert status_text({"cloud": 0, "bus": 12}) == "queued: cloud 0, bus 12"
    assert status_text({"bus": 1}, "bus: refused") == "queued: bus 1; last error: bus: refused"
    assert status_text({}) == "queued: no sinks"


# ------------------------------------------------------------------ logging


@pytest.fixture
def stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """A real file standing in for stderr, with the root logger restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with (tmp_path / "stderr").open("w+") as f:
        yield f
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def journal_stream_is(f: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``f`` the stream systemd connected to the journal."""
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def written(f: io.TextIOWrapper) -> list[str]:
    f.flush()
    f.seek(0)
    return f.read().splitlines()


@pytest.fixture
def journal_socket(short_dir: Path) -> str:
    path = short_dir / "journal.socket"
    path.touch()
    return str(path)


def test_plain_lines_when_stderr_is_not_the_journal(
    stream: io.TextIOWrapper, journal_socket: str
) -> None:
    handler = setup_logging("info", stream=stream, journal_socket=journal_socket)
    assert type(handler) is logging.StreamHandler
    log = logging.getLogger("relay.test")
    log.debug("not shown")
    log.warning("sink %s: down", "bus", extra={"SINK": "bus", "EVENT_ID": "01", "SOURCE": "mqtt"})
    assert written(stream)[-1] == "WARNING relay.test: sink bus: down"


def test_journal_stream_must_be_this_stream(
    stream: io.TextIOWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not is_journal_stream(stream)
    journal_stream_is(stream, monkeypatch)
    assert is_journal_stream(stream)
    assert not is_journal_stream(io.StringIO())  # no file descriptor at all
    st = os.fstat(stream.fileno())
    for value in [f"{st.st_dev}:{st.st_ino + 1}", f"{st.st_dev}", "a:b", ""]:
        monkeypatch.setenv("JOURNAL_STREAM", value)
        assert not is_journal_stream(stream), value


def test_journald_with_fields_when_stderr_is_the_journal(
    stream: io.TextIOWrapper, journal_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, journal = need_systemd_python()
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        journal, "send", lambda MESSAGE, **kw: sent.append({"MESSAGE": MESSAGE, **kw})
    )
    journal_stream_is(stream, monkeypatch)
    handler = setup_logging("info", stream=stream, journal_socket=journal_socket)
    assert isinstance(handler, journal.JournalHandler)
    log = logging.getLogger("relay.test")
    log.info("sink %s: sent %s", "bus", "01", extra={"SINK": "bus", "EVENT_ID": "01", "sink": "x"})
    [fields] = sent
    assert fields["MESSAGE"] == "relay.test: sink bus: sent 01"
    assert fields["SINK"] == "bus"
    assert fields["EVENT_ID"] == "01"
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "relay"
    assert fields["LOGGER"] == "relay.test"
    # JournalHandler hands over every LogRecord attribute; only journal field names remain,
    # without the reprs of the raw arguments.
    assert all(k == k.upper() for k in fields), sorted(fields)
    assert "CODE_ARGS" not in fields
    assert written(stream) == []


def test_journald_emits_without_a_journald(
    stream: io.TextIOWrapper, journal_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real systemd.journal.send: with no journald listening, nothing raises or spams."""
    need_systemd_python()
    journal_stream_is(stream, monkeypatch)
    setup_logging("info", stream=stream, journal_socket=journal_socket)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("relay.test").exception("failed", extra={"SINK": "bus"})
    assert written(stream) == []


def test_journald_refusing_falls_back_to_lines_told_once(
    stream: io.TextIOWrapper, journal_socket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, journal = need_systemd_python()
    refuse = True

    def send(MESSAGE: str, **fields: Any) -> None:
        if refuse:
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(journal, "send", send)
    journal_stream_is(stream, monkeypatch)
    setup_logging("info", stream=stream, journal_socket=journal_socket)
    log = logging.getLogger("relay.test")
    log.warning("a")
    log.info("b", extra={"SINK": "bus"})
    refuse = False
    log.info("c")
    refuse = True
    log.error("d")
    notice = "<4>WARNING relay.systemd: journald refused a log entry (Connection refused): "
    assert written(stream) == [
        notice + "plain lines until it takes them",
        "<4>WARNING relay.test: a",
        "<6>INFO relay.test: b",
        notice + "plain lines until it takes them",
        "<3>ERROR relay.test: d",
    ]


def test_no_journal_socket_means_prefixed_lines(
    stream: io.TextIOWrapper, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_systemd_python()
    journal_stream_is(stream, monkeypatch)
    missing = str(short_dir / "no-socket")
    handler = setup_logging("info", stream=stream, journal_socket=missing)
    assert type(handler) is logging.StreamHandler
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("relay.test").exception("failed")
    lines = written(stream)
    assert lines[0] == f"<4>WARNING relay.systemd: no journald socket at {missing}: " + (
        "logging without journal fields"
    )
    assert lines[1] == "<3>ERROR relay.test: failed"
    assert lines[-1] == "<3>ValueError: boom"  # every line of the traceback keeps its priority
    assert all(line.startswith("<3>") for line in lines[1:])


def test_without_systemd_python_under_systemd(
    no_systemd_python: None,
    stream: io.TextIOWrapper,
    journal_socket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal_stream_is(stream, monkeypatch)
    handler = setup_logging("info", stream=stream, journal_socket=journal_socket)
    assert type(handler) is logging.StreamHandler
    logging.getLogger("relay.test").info("x", extra={"SINK": "bus"})
    assert written(stream) == [
        "<4>WARNING relay.systemd: systemd-python is not installed (relay[systemd]): "
        "logging without journal fields",
        "<6>INFO relay.test: x",
    ]


def test_without_systemd_python_in_a_terminal(
    no_systemd_python: None, stream: io.TextIOWrapper, journal_socket: str
) -> None:
    setup_logging("info", stream=stream, journal_socket=journal_socket)
    assert written(stream) == [
        "INFO relay.systemd: systemd-python is not installed (relay[systemd]): "
        "logging without journal fields"
    ]


def test_setup_again_replaces_the_handler(stream: io.TextIOWrapper, journal_socket: str) -> None:
    first = setup_logging("info", stream=stream, journal_socket=journal_socket)
    second = setup_logging("warning", stream=stream, journal_socket=journal_socket)
    root = logging.getLogger()
    assert second in root.handlers
    assert first not in root.handlers
    assert root.level == logging.WARNING
