"""Private broker instances for restart/outage tests.

Tests that stop, kill or restart a broker must never touch the shared services on this
machine (Mosquitto on 1883, the RabbitMQ node ``rabbit@localhost`` on 5672, Redis on 6379).
Each class here starts its own instance on free loopback ports with its state in a private
directory, so it can be stopped and restarted at will, and cleans up after itself in
``__exit__`` even when the test failed.

Readiness is always checked by talking to the port (bounded waits, no fixed sleeps); a
broker that does not come up raises ``RuntimeError`` carrying the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers.wait import WaitTimeout, wait_until

MOSQUITTO = "/usr/sbin/mosquitto"
RABBITMQ_SERVER = "/usr/sbin/rabbitmq-server"
RABBITMQCTL = "/usr/sbin/rabbitmqctl"
REDIS_SERVER = "/usr/bin/redis-server"

LOOPBACK = "127.0.0.1"
# The user the Debian rabbitmq wrapper scripts switch to when run as root.
RABBITMQ_USER = "rabbitmq"
# How often readiness is checked: each check is a connection and a handshake.
POLL_S = 0.05


# --------------------------------------------------------------------------------------
# Small shared utilities
# --------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago.

    All sockets are held open until every port is chosen, so the ports are distinct.
    Another process may still grab one before the caller binds it (unavoidable race).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port() -> int:
    """Return one TCP port that was free on 127.0.0.1 a moment ago (see ``free_ports``)."""
    return free_ports(1)[0]


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(*paths: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of each existing file, labelled, for error messages."""
    parts = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        tail = "\n".join(text.splitlines()[-lines:])
        parts.append(f"--- {path} (tail) ---\n{tail}")
    return "\n".join(parts) if parts else "(no log output)"


def _exchange(host: str, port: int, request: bytes, nbytes: int, timeout: float = 1.0) -> bytes:
    """Connect, send ``request``, return up to ``nbytes`` of the reply (b"" on any error)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            reply = b""
            while len(reply) < nbytes:
                chunk = sock.recv(nbytes - len(reply))
                if not chunk:
                    break
                reply += chunk
            return reply
    except OSError:
        return b""


# --------------------------------------------------------------------------------------
# Brokers we run as a direct child process (Mosquitto, Redis)
# --------------------------------------------------------------------------------------


class _ChildBroker:
    """Common lifecycle for a broker that runs in the foreground as our own child process.

    Holding the ``Popen`` lets ``stop``/``kill`` signal exactly our process and reap it
    (an unreaped ``Popen`` would raise ResourceWarning under ``filterwarnings = error``).
    Subclasses provide ``_argv``, ``_prepare``, ``_ready`` and ``_log_files``.
    """

    name = "broker"
    start_timeout = 10.0
    stop_timeout = 10.0

    def __init__(self, workdir: Path, port: int | None) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.workdir = Path(workdir)
        self._proc: subprocess.Popen[bytes] | None = None
        # Startup errors (bad config, port in use) go to stderr before any log file opens.
        self._console = self.workdir / f"{self.name}.console"

    # -- to override -------------------------------------------------------------------

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files etc. Called before every start."""

    def _ready(self) -> bool:
        """True once the broker answers on its port."""
        return port_accepts(self.host, self.port)

    def _log_files(self) -> list[Path]:
        return [self._console]

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """True while our broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and return once it answers on ``port``.

        A no-op when already running. Raises ``RuntimeError`` (with the log tail) when the
        process exits or does not answer within ``start_timeout`` seconds.
        """
        if self.running:
            return
        self._reap()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with open(self._console, "ab") as console:
            # The child keeps its own copy of the fd; ours is closed when the block ends.
            self._proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        try:
            wait_until(
                self._ready_or_raise,
                self.start_timeout,
                f"{self.name} on {self.port}",
                interval=POLL_S,
            )
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            raise RuntimeError(
                f"{self.name} did not start on {self.host}:{self.port}: {exc}\n"
                + log_tail(*self._log_files())
            ) from None

    def _ready_or_raise(self) -> bool:
        if not self.running:
            raise RuntimeError("process exited during startup")
        return self._ready()

    def stop(self) -> None:
        """Graceful stop: SIGTERM, then wait for exit (SIGKILL after ``stop_timeout`` s).

        A no-op when not running. Returns once the process is reaped (its port is closed).
        """
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._reap()

    def kill(self) -> None:
        """Crash the broker: SIGKILL, then reap. State not yet saved to disk is lost."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def restart(self) -> None:
        """``stop()`` then ``start()`` on the same port and with the same state directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Make sure no process is left behind (SIGKILL if still running). Idempotent."""
        self.kill()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# MQTT 3.1.1 CONNECT (clean session, keepalive 10 s, client id "relay-probe"), DISCONNECT,
# and the CONNACK a ready broker answers with (session present 0, return code 0).
_MQTT_CONNECT = b"\x10\x17\x00\x04MQTT\x04\x02\x00\x0a\x00\x0brelay-probe"
_MQTT_DISCONNECT = b"\xe0\x00"
_MQTT_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


class PrivateMosquitto(_ChildBroker):
    """A private Mosquitto on ``127.0.0.1:<port>`` with persistence in ``workdir``.

    ``workdir`` holds ``mosquitto.conf``, ``mosquitto.log`` and the persistence file
    ``mosquitto.db``; ``restart()`` reuses all of them, so retained messages, persistent
    sessions and their queued QoS>0 messages survive a restart (Mosquitto writes the db
    on a clean stop; after ``kill()`` only what the last ``save()``/autosave wrote).

    ``extra`` is appended verbatim to the config (e.g. ``"max_queued_messages 100000"``).
    ``autosave_interval`` defaults to 0, which in Mosquitto means "save only on exit or
    SIGUSR1": that keeps ``save()`` exact (no autosave can race it). Pass e.g. 1 to make a
    ``kill()`` lose at most about a second of state instead.
    """

    name = "mosquitto"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra: str = "",
        autosave_interval: int = 0,
    ) -> None:
        super().__init__(workdir, port)
        self.extra = extra
        self.autosave_interval = autosave_interval
        self.config_file = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.db_file = self.workdir / "mosquitto.db"

    def _prepare(self) -> None:
        # Run as whoever we are: as root Mosquitto would otherwise drop to the
        # "mosquitto" user, which cannot write into a root-owned 0700 pytest tmp_path.
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            # Mosquitto concatenates location and file name: the trailing slash matters.
            f"persistence_location {self.workdir}/",
            f"autosave_interval {self.autosave_interval}",
            f"log_dest file {self.log_file}",
            "log_type all",
            "connection_messages true",
            f"user {user}",
            self.extra,
        ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [MOSQUITTO, "-c", str(self.config_file)]

    def _ready(self) -> bool:
        # A real MQTT handshake, not just a TCP connect: a port that merely accepts could
        # belong to someone else (our bind failed and the process has not exited yet).
        reply = _exchange(self.host, self.port, _MQTT_CONNECT + _MQTT_DISCONNECT, 4)
        return reply == _MQTT_CONNACK_ACCEPTED

    def _log_files(self) -> list[Path]:
        return [self._console, self.log_file]

    def save(self, timeout: float = 10.0) -> None:
        """Make Mosquitto write its persistence file now (SIGUSR1); return once written.

        Waits until ``mosquitto.db`` appears or changes (inode/mtime/size — Mosquitto
        writes a new file and renames it over the old one). Afterwards the file holds every
        message Mosquitto had processed when the signal was sent. With a non-zero
        ``autosave_interval`` an autosave finishing just before the signal could satisfy
        the wait early; the default (0) rules that out.
        """
        if self._proc is None or not self.running:
            raise RuntimeError("mosquitto is not running")
        before = self._db_signature()
        self._proc.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: self._db_signature() not in (None, before),
            timeout,
            "mosquitto.db",
            interval=POLL_S,
        )

    def _db_signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.db_file.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


class PrivateRedis(_ChildBroker):
    """A private Redis on ``127.0.0.1:<port>`` with an append-only file in ``workdir``.

    Runs ``redis-server --appendonly yes --save ""`` in the foreground (not daemonized,
    so we own the process). ``restart()`` keeps the AOF, so written keys survive it; Redis
    fsyncs the AOF every second, so ``kill()`` may lose the last second of writes.
    ``extra_args`` are appended to the command line (e.g. ``["--appendfsync", "always"]``).
    """

    name = "redis"

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(workdir, port)
        self.extra_args = list(extra_args)
        self.log_file = self.workdir / "redis.log"

    @property
    def url(self) -> str:
        """redis-py URL of database 0."""
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
            *self.extra_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        # Redis listens before it has loaded the AOF (and answers -LOADING meanwhile), so
        # an open port is not enough: wait for a real PONG.
        return _exchange(self.host, self.port, b"PING\r\n", 7).startswith(b"+PONG")

    def _log_files(self) -> list[Path]:
        return [self._console, self.log_file]


# --------------------------------------------------------------------------------------
# RabbitMQ
# --------------------------------------------------------------------------------------

# AMQP 0-9-1 protocol header; a ready broker answers with a Connection.Start method frame
# (frame type 1 on channel 0).
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_AMQP_CONNECTION_START_PREFIX = b"\x01\x00\x00"


class _NodeExited(RuntimeError):
    """A private RabbitMQ node's processes exited while it was starting."""


class PrivateRabbit:
    """A private RabbitMQ node (3.10, Debian packaging) on free loopback ports.

    Configuration (all isolated from the shared ``rabbit@localhost`` node):

    * node name ``relaytest-<pid>-<random>@localhost`` (``RABBITMQ_NODENAME``);
    * AMQP listener ``127.0.0.1:<port>`` from our own ``rabbitmq.conf``
      (``RABBITMQ_CONFIG_FILE``) — the system config would bind 5672 — plus
      ``RABBITMQ_NODE_PORT``; Erlang distribution on ``RABBITMQ_DIST_PORT``;
    * ``RABBITMQ_MNESIA_BASE``, ``RABBITMQ_LOG_BASE``, ``RABBITMQ_PID_FILE``,
      ``ERL_CRASH_DUMP`` all inside ``workdir`` (owned by the ``rabbitmq`` user, because
      the wrapper scripts drop to that user when run as root);
    * ``RABBITMQ_ENABLED_PLUGINS_FILE`` -> a file containing ``[].``: no plugins, so in
      particular no management listener competing for 15672;
    * ``RABBITMQ_ADVANCED_CONFIG_FILE`` -> a path in ``workdir`` that does not exist, so a
      system ``advanced.config`` cannot leak in;
    * Erlang cookie: the shared one. The wrapper runs both the node and ``rabbitmqctl``
      as ``rabbitmq`` with HOME=/var/lib/rabbitmq, so both read the same
      ``.erlang.cookie`` and ``rabbitmqctl -n <node>`` works without any cookie handling.

    ``workdir`` is created with ``tempfile.mkdtemp`` under ``parent`` (default: the system
    temp dir) and removed by ``close()``. ``parent`` must be traversable by the rabbitmq
    user — pytest's ``tmp_path`` is not (``/tmp/pytest-of-root`` is 0700).

    Starting costs several seconds: share one instance per test module.
    """

    start_timeout = 60.0
    stop_timeout = 60.0

    def __init__(self, parent: Path | None = None) -> None:
        self.host = LOOPBACK
        self.port, self.dist_port = free_ports(2)
        self.nodename = f"relaytest-{os.getpid()}-{secrets.token_hex(4)}@localhost"
        self._parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        self._workdir: Path | None = None
        self._started_once = False  # a start succeeded: the AMQP port is in tests' configs

    # -- paths and environment ---------------------------------------------------------

    @property
    def url(self) -> str:
        """pika/AMQP URL for the default vhost as guest (allowed: we connect via loopback)."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def workdir(self) -> Path:
        """The node's private directory (created on first ``start()``)."""
        if self._workdir is None:
            raise RuntimeError("PrivateRabbit has not been started yet")
        return self._workdir

    @property
    def pid_file(self) -> Path:
        return self.workdir / "node.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / "log" / f"{self.nodename}.log"

    def _env(self) -> dict[str, str]:
        # Drop inherited RABBITMQ_*/ERL_* settings: they would configure our node like
        # (or worse, as) whatever node the caller's environment was meant for.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        wd = self.workdir
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(wd / "mnesia"),
            RABBITMQ_LOG_BASE=str(wd / "log"),
            RABBITMQ_CONFIG_FILE=str(wd / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(wd / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(wd / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            ERL_CRASH_DUMP=str(wd / "erl_crash.dump"),
        )
        return env

    def _prepare(self) -> None:
        """Create and populate ``workdir`` once; later starts reuse it (and its data)."""
        if self._workdir is not None:
            return
        _check_traversable(self._parent, RABBITMQ_USER)
        wd = Path(tempfile.mkdtemp(prefix="relay-rabbit-", dir=self._parent))
        self._workdir = wd
        (wd / "mnesia").mkdir()
        (wd / "log").mkdir()
        (wd / "enabled_plugins").write_text("[].\n")
        self._write_config()
        for path in [wd, *wd.rglob("*")]:
            shutil.chown(path, RABBITMQ_USER, RABBITMQ_USER)

    def _write_config(self) -> None:
        conf = self.workdir / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            # The shared node's 50MB default would block publishers on a nearly full /tmp
            # and make outage tests fail for an unrelated reason.
            "disk_free_limit.absolute = 1MB\n"
        )
        shutil.chown(conf, RABBITMQ_USER, RABBITMQ_USER)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while any OS process of this node is alive."""
        return bool(self._node_pids())

    def start(self) -> None:
        """Start the node (``rabbitmq-server -detached``) and return once it serves AMQP.

        Ready means: the port answers the AMQP protocol header with Connection.Start
        and ``rabbitmqctl await_startup`` succeeded. Data from a previous run of this
        object (durable queues, persistent messages) is kept. No-op when running.

        A node whose processes exit during start-up is tried again (three times in all) on
        fresh ports: the ports were free when chosen, but under ``pytest -n`` another
        worker's broker or proxy can take one before the node binds it, and the node then
        exits at once (seen in CI). The AMQP port changes only before the first start
        succeeded, since the tests' configs point at it afterwards.
        """
        for attempt in (1, 2, 3):
            try:
                self._start_once()
                self._started_once = True
                return
            except _NodeExited:
                if attempt == 3:
                    raise
                self.dist_port = free_port()
                if not self._started_once:
                    self.port = free_port()
                    self._write_config()

    def _start_once(self) -> None:
        if self.running:
            return
        self._prepare()
        self.pid_file.unlink(missing_ok=True)  # a stale pid would fool liveness checks
        with open(self.workdir / "startup.log", "ab") as out:
            rc = subprocess.run(
                [RABBITMQ_SERVER, "-detached"],
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,  # not a pipe: the detached VM could hold it open forever
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            ).returncode
        try:
            if rc != 0:
                raise RuntimeError(f"rabbitmq-server -detached exited with {rc}")
            wait_until(
                self._amqp_ready_or_raise, self.start_timeout, "the AMQP listener", interval=POLL_S
            )
            self.ctl("await_startup", "--timeout", str(int(self.start_timeout)))
        except (TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
            self.kill()
            error = _NodeExited if isinstance(exc, _NodeExited) else RuntimeError
            raise error(
                f"private RabbitMQ {self.nodename} did not start on port {self.port}: {exc}\n"
                + log_tail(self.workdir / "startup.log", self.log_file)
            ) from None

    def _amqp_ready_or_raise(self) -> bool:
        if not self.running:
            raise _NodeExited("the node's processes exited during startup")
        reply = _exchange(self.host, self.port, _AMQP_HEADER, 3)
        return reply == _AMQP_CONNECTION_START_PREFIX

    def stop(self) -> None:
        """Graceful stop via ``rabbitmqctl -n <node> stop <pidfile>``.

        Returns once the VM has exited and the AMQP port is closed; falls back to
        ``kill()`` if that does not happen within ``stop_timeout`` seconds. Durable
        queues and persistent messages are on disk afterwards. No-op when not running.
        """
        if not self.running:
            return
        try:
            # With the pid file argument rabbitmqctl waits for the OS process to exit.
            self.ctl("stop", str(self.pid_file), timeout=self.stop_timeout)
            wait_until(
                lambda: not self.running and not port_accepts(self.host, self.port),
                self.stop_timeout,
                "the node to exit",
                interval=POLL_S,
            )
        except (TimeoutError, RuntimeError, subprocess.SubprocessError):
            self.kill()

    def kill(self) -> None:
        """Crash the node: SIGKILL every OS process of it (beam, erl_child_setup, ...).

        The shared epmd is left alone even if our node happened to start it.
        """

        def gone() -> bool:  # or else killed once more
            pids = self._node_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not pids

        try:
            wait_until(gone, 5, f"the processes of {self.nodename} to die", interval=0.1)
        except WaitTimeout:
            raise RuntimeError(
                f"could not kill processes of {self.nodename}: {self._node_pids()}"
            ) from None

    def restart(self) -> None:
        """``stop()`` then ``start()``: same node name, ports and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Kill whatever is left of the node and delete ``workdir``. Idempotent."""
        if self._workdir is None:
            return
        self.kill()
        shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <node> <args>`` against this node; return its stdout.

        Raises ``RuntimeError`` (with the tool's output) on a non-zero exit status.
        """
        proc = subprocess.run(
            [RABBITMQCTL, "-n", self.nodename, *args],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): "
                + (proc.stdout + proc.stderr).decode(errors="replace")
            )
        return proc.stdout.decode(errors="replace")

    def _node_pids(self) -> list[int]:
        """Pids of every process carrying our unique RABBITMQ_NODENAME, except epmd.

        The detached VM is not our child, and the pid file appears only some way into the
        boot, so identify the node's processes by the environment we gave them — precise,
        since the node name is unique to this object.
        """
        marker = f"RABBITMQ_NODENAME={self.nodename}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                # epmd is shared by every node on the machine: never count (kill) it.
                if (entry / "comm").read_text().strip() == "epmd":
                    continue
                # Zombies are already dead; their parent reaps them.
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            except OSError:
                continue  # exited meanwhile, or not ours to read
            pids.append(int(entry.name))
        return pids

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_traversable(directory: Path, user: str) -> None:
    """Raise ValueError unless ``user`` can reach into ``directory`` (x on every ancestor).

    Approximate (ignores ACLs and supplementary groups) but catches the common trap of a
    root-owned 0700 directory such as pytest's ``tmp_path``.
    """
    account = pwd.getpwnam(user)
    for path in [directory.resolve(), *directory.resolve().parents]:
        st = path.stat()
        if st.st_mode & stat.S_IXOTH:
            continue
        if st.st_uid == account.pw_uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid == account.pw_gid and st.st_mode & stat.S_IXGRP:
            continue
        raise ValueError(f"{path} is not traversable by user {user!r}; choose another parent")


def binary_missing(*paths: str) -> str | None:
    """A reason string when one of ``paths`` is not an executable file, else None."""
    for path in paths:
        if not os.access(path, os.X_OK):
            return f"{path} is not installed"
    return None


def rabbit_unusable() -> str | None:
    """A reason why ``PrivateRabbit`` cannot work here, else None (for ``pytest.skip``)."""
    missing = binary_missing(RABBITMQ_SERVER, RABBITMQCTL)
    if missing:
        return missing
    try:
        pwd.getpwnam(RABBITMQ_USER)
    except KeyError:
        return f"there is no {RABBITMQ_USER!r} user"
    if os.geteuid() != 0:
        return "the rabbitmq wrapper scripts must be run as root (or rabbitmq)"
    return None


__all__ = [
    "MOSQUITTO",
    "RABBITMQCTL",
    "RABBITMQ_SERVER",
    "REDIS_SERVER",
    "PrivateMosquitto",
    "PrivateRabbit",
    "PrivateRedis",
    "binary_missing",
    "free_port",
    "free_ports",
    "log_tail",
    "port_accepts",
    "rabbit_unusable",
]
