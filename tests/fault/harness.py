"""The fault harness: the real agent as a subprocess, numbered events in, and a ledger of
what each sink received.

    agent = AgentProcess(tmp_path, mqtt_part(broker.port, topic), http_sink_part(server.url))
    with agent, MqttNumbers(broker.host, broker.port, topic) as pub:
        agent.start(ready="mqtt: subscribed")       # waits for that stderr line
        pub.start(range(1000), rate=200)             # in the background
        agent.kill()                                 # SIGKILL, reaped: a disruption
        agent.start("after_commit_before_ack:5", ready=None)
        agent.wait_exit(15)                          # it dies there: another one
        agent.start()
        pub.join(); pub.wait_acked()
        ledger = Ledger(range(1000))
        wait_until(lambda: ledger.replace("cloud", http_numbers(server, topic))
                   or ledger.complete("cloud"), 30, "every event")
    report = ledger.check("cloud", disruptions=agent.kills)   # asserts; .line() to print

What is here, each usable alone:

- config parts, the fault suite's defaults over :mod:`tests.helpers.toml`: :func:`mqtt_part`,
  :func:`http_sink_part`, :func:`amqp_sink_part` (anything else straight from that module);
- :class:`AgentProcess`: ``relay run`` with an optional ``RELAY_CRASHPOINT``, its stderr
  collected line by line with arrival times (:meth:`AgentProcess.wait_line`), SIGKILL,
  SIGTERM, restart, ``relay status --json`` and ``relay push``;
- :class:`Ledger`: per sink, by sequence number: lost, duplicated (re-sent with the same id,
  or spooled twice under a new id), out of order; re-sends are allowed only as replays, one
  or two runs of already-seen numbers per disruption (a kill, a broker restart);
- producers of numbered events: :class:`MqttNumbers` (MQTT QoS 1, counts the broker's
  PUBACKs) and :func:`push_numbers` (``relay push``);
- readers: :func:`http_numbers` (a :class:`~tests.helpers.http_server.RemoteServer`) and
  :class:`AmqpQueue` (drains a real RabbitMQ queue with pika);
- :func:`integrity_check`: ``PRAGMA integrity_check`` on the spool file.

Waiting, as everywhere in the tests, is :func:`tests.helpers.wait.wait_until`.

Every event this harness produces carries ``{"n": <number>}`` as its payload; readers keep
only events with an integer ``n`` under the given name prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pika
import pika.exceptions

from tests.helpers import toml
from tests.helpers.common import RELAY
from tests.helpers.http_server import RemoteServer
from tests.helpers.mqtt import Publisher

__all__ = [
    "AgentProcess",
    "AmqpQueue",
    "Ledger",
    "Line",
    "MqttNumbers",
    "SinkReport",
    "amqp_sink_part",
    "clean_env",
    "http_numbers",
    "http_sink_part",
    "integrity_check",
    "mqtt_part",
    "numbered",
    "push_numbers",
    "quiet",
]

Numbered = tuple[int, str]  # (n, event id)


# ------------------------------------------------------------------------------ config


# The fault suite's sinks retry fast (the backoff is not what these tests look at).
FAST_RETRY = {"retry_initial": "50ms", "retry_max": "1s"}


def mqtt_part(port: int, topic: str, **keys: Any) -> str:
    """``[mqtt]`` at ``127.0.0.1:port`` and one MQTT source on ``topic/#``
    (:func:`tests.helpers.toml.mqtt_in`), with a client id of the fault suite's own."""
    keys.setdefault("client_id", f"relay-fault-{uuid.uuid4().hex[:8]}")
    return toml.mqtt_in(port, topic, **keys)


def http_sink_part(url: str, **keys: Any) -> str:
    """An HTTP sink; fast retries unless ``retry_initial`` / ``retry_max`` are given."""
    return toml.http_sink(url, **{**FAST_RETRY, **keys})


def amqp_sink_part(url: str, queue: str, **keys: Any) -> str:
    """An AMQP sink publishing to ``queue`` (declared durable by the sink); fast retries."""
    return toml.amqp_sink(url, queue=queue, **{**FAST_RETRY, **keys})


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's RELAY_* overrides (but RELAY_REQUIRE_BROKERS),
    unbuffered, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RELAY_") or k == "RELAY_REQUIRE_BROKERS"
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ the agent


@dataclass(frozen=True)
class Line:
    """One stderr line of the agent: when it arrived (monotonic), which run wrote it."""

    at: float
    run: int
    text: str


class AgentProcess:
    """``relay run --config <workdir>/relay.toml`` as a subprocess, started as often as needed.

    The config is written from ``parts`` (see :func:`tests.helpers.toml.write`); the state
    dir defaults to ``<workdir>/state``. Every stderr line of every run is kept in
    :attr:`lines`.
    :attr:`kills` counts SIGKILLs and crash points that fired: the disruptions after which
    a sink may see replays. Use as a context manager: the agent is stopped at the end
    (SIGTERM, then SIGKILL).
    """

    def __init__(
        self,
        workdir: Path,
        *parts: str,
        state_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        node: str = "fault-node",
        log_level: str = "info",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir or self.workdir / "state"
        self.config = self.workdir / "relay.toml"
        self.env = dict(env) if env is not None else clean_env()
        self._node, self._log_level = node, log_level
        self.write(*parts)
        self.lines: list[Line] = []
        self.runs = 0
        self.kills = 0  # SIGKILLs sent, plus crash points that fired
        self.exit_codes: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()

    def write(self, *parts: str) -> None:
        """(Re)write the config from ``parts``: takes effect at the next start."""
        toml.write(
            self.config,
            *parts,
            node=self._node,
            state_dir=self.state_dir,
            log_level=self._log_level,
        )

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(
        self,
        crashpoint: str | None = None,
        *,
        ready: str | None = "relay started",
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> int:
        """Start a run; return the index in :attr:`lines` where its output begins.

        ``crashpoint`` is ``RELAY_CRASHPOINT`` ("name" or "name:N"). Unless ``ready`` is
        None, wait until a line containing it appears; fail (with the output) if the agent
        exits first. A crash point that fires before ready makes the start fail: arm late
        points, or pass ``ready=None`` and :meth:`wait_exit`.
        """
        if self.running:
            raise RuntimeError("the agent is already running")
        self._reap()
        run_env = {**self.env, **(env or {})}
        run_env.pop("RELAY_CRASHPOINT", None)
        if crashpoint:
            run_env["RELAY_CRASHPOINT"] = crashpoint
        with self._changed:
            mark = len(self.lines)
            self.runs += 1
            run = self.runs
        self._proc = subprocess.Popen(
            [*RELAY, "run", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=run_env,
        )
        assert self._proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stderr, run), name=f"agent-stderr-{run}"
        )
        self._reader.daemon = True
        self._reader.start()
        if ready is not None:
            self.wait_line(ready, timeout, since=mark)
        return mark

    def _read(self, stream: IO[bytes], run: int) -> None:
        for raw in stream:
            line = Line(time.monotonic(), run, raw.decode("utf-8", "replace").rstrip("\n"))
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def kill(self) -> int:
        """SIGKILL the running agent (as a power cut would), reap it; its exit code."""
        if not self.running:
            raise AssertionError("kill(): the agent is not running\n" + self.tail())
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self.kills += 1
        return self._reap()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), wait up to ``timeout``; the exit code (0 expected)."""
        if self._proc is None:
            raise AssertionError("terminate(): the agent was never started")
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._reap()
                raise AssertionError(
                    f"the agent did not stop within {timeout:g}s of SIGTERM\n" + self.tail()
                ) from None
        return self._reap()

    def wait_exit(self, timeout: float) -> int:
        """Wait for the agent to exit by itself (a crash point); its exit code. A SIGKILL
        from a crash point counts in :attr:`kills`."""
        if self._proc is None:
            raise AssertionError("wait_exit(): the agent was never started")
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the agent did not exit within {timeout:g}s\n" + self.tail()
            ) from None
        code = self._reap()
        if code == -signal.SIGKILL:
            self.kills += 1
        return code

    def restart(self, crashpoint: str | None = None, **start: Any) -> int:
        """SIGKILL the agent if it runs, then :meth:`start` it again."""
        if self.running:
            self.kill()
        return self.start(crashpoint, **start)

    def _reap(self) -> int:
        """Wait for the process and its stderr reader; the exit code (0 if none ran)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        code = proc.wait()
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        if proc.stderr is not None:
            proc.stderr.close()
        self.exit_codes.append(code)
        return code

    def close(self) -> None:
        """Stop the agent if it runs (SIGTERM, then SIGKILL). Idempotent."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._reap()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- output --------------------------------------------------------------------------

    def mark(self) -> int:
        """The index of the next line: pass it as ``since`` to look only at what follows."""
        with self._changed:
            return len(self.lines)

    def find(self, pattern: str | re.Pattern[str], since: int = 0) -> Line | None:
        """The first line from index ``since`` on that contains ``pattern`` (a string) or
        matches it (a compiled regex, with ``search``)."""
        with self._changed:
            lines = self.lines[since:]
        return next((line for line in lines if _matches(pattern, line.text)), None)

    def find_all(self, pattern: str | re.Pattern[str], since: int = 0) -> list[Line]:
        """Every line from index ``since`` on that contains (or matches) ``pattern``."""
        with self._changed:
            lines = self.lines[since:]
        return [line for line in lines if _matches(pattern, line.text)]

    def wait_line(self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0) -> Line:
        """Wait for a line from index ``since`` on that contains (or matches) ``pattern``.
        Fails with the output's tail on timeout, or if the agent exits first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((ln for ln in self.lines[since:] if _matches(pattern, ln.text)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                proc = self._proc
                gone = proc is None or (proc.poll() is not None and not _alive(self._reader))
                if left <= 0 or gone:
                    why = f"timed out after {timeout:g}s" if left <= 0 else "the agent exited"
                    raise AssertionError(
                        f"{why} waiting for {pattern!r} in the agent's output\n"
                        + self._tail_locked()
                    )
                self._changed.wait(min(left, 0.2))

    def text(self, since: int = 0) -> str:
        """The collected stderr from index ``since`` on."""
        with self._changed:
            return "\n".join(line.text for line in self.lines[since:])

    def tail(self, n: int = 40) -> str:
        with self._changed:
            return self._tail_locked(n)

    def _tail_locked(self, n: int = 40) -> str:
        lines = self.lines[-n:]
        return "--- agent stderr (tail) ---\n" + "\n".join(
            f"[run {line.run}] {line.text}" for line in lines
        )

    # -- the other commands --------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """``relay <args> --config <this config>``, run to completion (not checked)."""
        return subprocess.run(
            [*RELAY, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        """``relay status --json`` (it reads the spool file; works with the agent down)."""
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        if not done.stdout.startswith("{"):
            return {"spool": None, "sinks": []}  # no spool yet
        return dict(json.loads(done.stdout))

    def depths(self) -> dict[str, int]:
        """Queue depth per sink, from ``relay status --json``."""
        return {s["name"]: int(s["depth"]) for s in self.status()["sinks"]}

    def push(self, name: str, payload: Any = None) -> str:
        """``relay push NAME --payload JSON``; the event id it printed (exit 0 asserted)."""
        args = ["push", name] + ([] if payload is None else ["--payload", json.dumps(payload)])
        done = self.cli(*args)
        assert done.returncode == 0, f"relay push exited {done.returncode}: {done.stderr}"
        return done.stdout.strip()


def _matches(pattern: str | re.Pattern[str], text: str) -> bool:
    return pattern in text if isinstance(pattern, str) else pattern.search(text) is not None


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


# ------------------------------------------------------------------------------ the ledger


@dataclass
class SinkReport:
    """What one sink received, judged against the numbers expected."""

    sink: str
    expected: int
    received: int  # deliveries counted, duplicates included
    lost: list[int]
    resent: int  # the same event (same id) delivered again
    respooled: int  # the same number under another id: spooled twice (ingest replay)
    out_of_order: list[int]  # numbers whose first arrival came after a higher number's
    replays: int  # runs of already-seen numbers: each a re-send after a disruption
    longest_replay: int
    unexpected: list[int] = field(default_factory=list)  # numbers nobody sent

    @property
    def duplicates(self) -> int:
        return self.resent + self.respooled

    def line(self) -> str:
        return (
            f"{self.sink}: {self.received} received for {self.expected}: "
            f"{len(self.lost)} lost, {self.duplicates} duplicates ({self.resent} re-sent, "
            f"{self.respooled} spooled twice) in {self.replays} replays "
            f"(longest {self.longest_replay}), {len(self.out_of_order)} out of order"
        )


class Ledger:
    """Numbered deliveries per sink, in arrival order.

    Per-sink order (P3) means: the first arrival of each number comes in increasing order.
    A kill may make a sink see numbers again (at-least-once, P2): the forwarder re-sends
    from its last committed ack, and the MQTT broker re-sends what was not acknowledged,
    which the spool then holds twice. Each shows as one *replay*: a run of numbers already
    seen. :meth:`check` allows at most ``2 * disruptions`` replays (one of each kind).
    """

    def __init__(self, expected: Iterable[int]) -> None:
        self.expected = sorted(set(expected))
        self._got: dict[str, list[Numbered]] = {}
        self._lock = threading.Lock()

    def record(self, sink: str, deliveries: Iterable[Numbered]) -> None:
        """Append ``(n, event id)`` deliveries, in the order the sink received them."""
        with self._lock:
            self._got.setdefault(sink, []).extend(deliveries)

    def replace(self, sink: str, deliveries: Iterable[Numbered]) -> None:
        """Set everything ``sink`` received so far (for readers that see it whole)."""
        with self._lock:
            self._got[sink] = list(deliveries)

    def deliveries(self, sink: str) -> list[Numbered]:
        with self._lock:
            return list(self._got.get(sink, []))

    def distinct(self, sink: str) -> int:
        """How many expected numbers ``sink`` has received at least once."""
        want = set(self.expected)
        return len({n for n, _ in self.deliveries(sink)} & want)

    def complete(self, sink: str) -> bool:
        return self.distinct(sink) == len(self.expected)

    def report(self, sink: str) -> SinkReport:
        got = self.deliveries(sink)
        want = set(self.expected)
        ids_seen: set[str] = set()
        numbers_seen: set[int] = set()
        resent = respooled = replays = longest = run = 0
        out_of_order: list[int] = []
        top = -1
        for n, event_id in got:
            if n in numbers_seen:
                if event_id in ids_seen:
                    resent += 1
                else:
                    respooled += 1
                run += 1
                if run == 1:
                    replays += 1
                longest = max(longest, run)
            else:
                run = 0
                if n < top:
                    out_of_order.append(n)
                top = max(top, n)
            numbers_seen.add(n)
            ids_seen.add(event_id)
        return SinkReport(
            sink=sink,
            expected=len(want),
            received=len(got),
            lost=sorted(want - numbers_seen),
            resent=resent,
            respooled=respooled,
            out_of_order=out_of_order,
            replays=replays,
            longest_replay=longest,
            unexpected=sorted(numbers_seen - want),
        )

    def check(
        self, sink: str, *, disruptions: int = 0, max_duplicates: int | None = None
    ) -> SinkReport:
        """Assert: nothing lost, nothing unexpected, first arrivals in order, re-sends only
        as replays, at most two per disruption (none without one), and, if given, at most
        ``max_duplicates`` duplicates in all. The report."""
        r = self.report(sink)
        assert not r.lost, f"{r.line()}; lost: {ranges(r.lost)}"
        assert not r.unexpected, f"{r.line()}; never sent: {ranges(r.unexpected)}"
        assert not r.out_of_order, f"{r.line()}; out of order: {ranges(r.out_of_order)}"
        assert r.replays <= 2 * disruptions, (
            f"{r.line()}: more replays than {disruptions} disruption(s) explain"
        )
        if max_duplicates is not None:
            assert r.duplicates <= max_duplicates, f"{r.line()}: over {max_duplicates}"
        return r


def ranges(ns: Sequence[int], limit: int = 12) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (the first ``limit`` runs, in order)."""
    ns = sorted(ns)
    runs: list[str] = []
    i = 0
    while i < len(ns) and len(runs) < limit:
        j = i
        while j + 1 < len(ns) and ns[j + 1] == ns[j] + 1:
            j += 1
        runs.append(str(ns[i]) if i == j else f"{ns[i]}-{ns[j]}")
        i = j + 1
    return ", ".join(runs) + (" ..." if i < len(ns) else "")


def numbered(events: Iterable[Mapping[str, Any]], prefix: str = "") -> list[Numbered]:
    """``(n, id)`` of the events named ``prefix...`` whose payload holds an integer ``n``."""
    out = []
    for e in events:
        payload = e.get("payload")
        if not str(e.get("name", "")).startswith(prefix) or not isinstance(payload, dict):
            continue
        n = payload.get("n")
        if isinstance(n, int) and not isinstance(n, bool):
            out.append((n, str(e["id"])))
    return out


# ------------------------------------------------------------------------------ producers


class MqttNumbers:
    """Publishes ``{"n": n}`` to ``<topic>/seq`` with QoS 1 and counts the broker's PUBACKs
    (what the broker has, it keeps for relay's persistent session)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.topic = f"{topic}/seq"
        self._pub = Publisher(host, port)
        self._mids: list[int] = []
        self._thread: threading.Thread | None = None
        self.published = 0

    def publish(self, ns: Iterable[int], *, rate: float | None = None) -> None:
        """Publish each number (at most ``rate`` per second); returns once all are queued
        in the client, not once acknowledged (see :meth:`wait_acked`)."""
        started = time.monotonic()
        for i, n in enumerate(ns):
            self._mids.append(self._pub.publish(self.topic, json.dumps({"n": n})))
            self.published += 1
            if rate:
                ahead = started + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def start(self, ns: Iterable[int], *, rate: float | None = None) -> None:
        """:meth:`publish` in a background thread; :meth:`join` waits for it."""
        self._thread = threading.Thread(
            target=self.publish, args=(ns,), kwargs={"rate": rate}, daemon=True
        )
        self._thread.start()

    def join(self, timeout: float = 120.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the publisher did not finish"

    def wait_acked(self, timeout: float = 60.0) -> None:
        """Wait until the broker has acknowledged every publish so far."""
        self._pub.wait(list(self._mids), timeout)

    def close(self) -> None:
        self._pub.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def push_numbers(agent: AgentProcess, ns: Iterable[int], name: str = "push/seq") -> list[str]:
    """``relay push NAME --payload {"n": n}`` for each number, one process each (about half
    a second apiece: keep the count small); the event ids."""
    return [agent.push(name, {"n": n}) for n in ns]


# ------------------------------------------------------------------------------ readers


def http_numbers(server: RemoteServer, prefix: str = "") -> list[Numbered]:
    """What ``server`` accepted (answered 2xx and got the answer out), in arrival order.

    A request cut short by a kill can still be "answered" (the write lands in the dead
    socket's buffer) with a truncated body: it delivered nothing, and is skipped.
    """
    events: list[Any] = []
    for request in list(server.received):
        if not 200 <= request.status < 300:
            continue
        try:
            events.extend(request.events)
        except ValueError:
            continue
    return numbered(events, prefix)


def quiet(server: RemoteServer) -> RemoteServer:
    """Keep ``server`` from printing a traceback for each request that a killed agent cut
    short (socketserver's ``handle_error`` prints them all to stderr)."""
    server._httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
    return server


class AmqpQueue:
    """A durable queue on a real RabbitMQ, read by the test with its own pika connection.

    ``name`` defaults to a fresh unique one. :meth:`drain` takes every message there now
    (auto-ack) and adds it to :attr:`received`; it reconnects when the broker went away
    (a restarted private node). :meth:`delete` removes the queue.
    """

    def __init__(self, url: str, name: str | None = None, *, declare: bool = True) -> None:
        self.url = url
        self.name = name or f"relay-fault-{uuid.uuid4().hex[:10]}"
        self.received: list[Numbered] = []
        self.bodies: list[dict[str, Any]] = []
        self._conn: Any = None
        self._ch: Any = None
        if declare:
            self._channel().queue_declare(self.name, durable=True)

    def _channel(self) -> Any:
        if self._conn is None or not self._conn.is_open or not self._ch.is_open:
            self._drop()
            self._conn = pika.BlockingConnection(pika.URLParameters(self.url))
            self._ch = self._conn.channel()
            self._ch.basic_qos(prefetch_count=1000)
        return self._ch

    def _drop(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()

    def depth(self) -> int:
        """Messages waiting in the queue (not yet drained)."""
        return int(self._channel().queue_declare(self.name, passive=True).method.message_count)

    def drain(self, idle: float = 0.3, limit: float = 2.0) -> list[Numbered]:
        """Take every message until none came for ``idle`` seconds (or for at most ``limit``
        seconds, while a stream keeps coming); the new deliveries. Each message's
        ``message_id`` must be its event's id (P2)."""
        new: list[Numbered] = []
        deadline = time.monotonic() + limit
        try:
            ch = self._channel()
            # Manual acks: cancel() below requeues what pika holds but has not yielded yet
            # (with auto_ack those messages would be gone, and look lost).
            for method, props, body in ch.consume(self.name, inactivity_timeout=idle):
                if method is None:
                    break
                ch.basic_ack(method.delivery_tag)
                event = json.loads(body)
                assert props.message_id == event["id"], "message_id is not the event id"
                self.bodies.append(event)
                new.extend(numbered([event]))
                if time.monotonic() > deadline:
                    break
            ch.cancel()
        except (pika.exceptions.AMQPError, OSError):
            self._drop()  # the broker went away; what we took is kept, the rest waits
        self.received.extend(new)
        return new

    def delete(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self._channel().queue_delete(self.name)

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()
        self.close()


# ------------------------------------------------------------------------------ the spool


def integrity_check(state_dir: Path) -> str:
    """``PRAGMA integrity_check`` of ``<state_dir>/spool.db``, read-only (the agent may be
    running): "ok" for a sound file, else SQLite's list of problems."""
    db = state_dir / "spool.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "\n".join(str(r[0]) for r in rows)
