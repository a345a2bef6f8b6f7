"""relay's metrics as prometheus-client objects, in a registry of relay's own.

Two kinds of figure, each counted where it is true:

- What the agent does (deliveries, retries, dead letters, send times, command outcomes,
  reconnects): counters in this process, from zero at each start (or reload).
- What the spool holds (queue depth, oldest event, bytes, dead letters) and what it has
  stored by source: read from the spool file at scrape time by :class:`SpoolCollector`.
  Events are counted by source in the spool's own commit (``relay.spool.txn``), so ``relay
  push``, which writes the file from another process, is counted exactly like MQTT, and an
  event counts once it is on disk, never when it was refused. Those counters live as long as
  the spool file, across restarts.

The registry is relay's, not prometheus-client's global one: an agent reloaded by SIGHUP
builds a new one in the same process (the global registry would refuse the same names
twice), and no library can add series to relay's endpoint. It holds the process collector
(CPU seconds, resident memory, open files, start time: what shows that an idle relay stays
quiet and small) and ``python_info``; not the garbage-collector series, which nobody alerts on.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import __version__
from relay.errors import SpoolError
from relay.metrics import Metrics
from relay.spool import Spool

log = logging.getLogger(__name__)

# Sends take ~1 ms to a broker on the box and up to a sink's timeout_s (10-30 s) when the far
# end is slow; a retry's wait is not in here, only the send itself.
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OUTCOMES = ("ok", "failed", "expired", "interrupted")
UNKNOWN_DEVICE = "@unknown"  # a command for a device not in the config (names have no "@")


class PrometheusMetrics(Metrics):
    """The metric objects; ``registry`` is what the endpoint serves."""

    def __init__(
        self,
        spool: Spool,
        *,
        node: str,
        sinks: Iterable[str] = (),
        devices: Iterable[str] = (),
        connections: Iterable[str] = (),
    ) -> None:
        # prometheus-client adds a "<name>_created" gauge beside every counter and histogram
        # unless told not to (process-wide; the function has no annotations). The process
        # collector's start time says the same once, and a Pi serves half the series.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = reg = CollectorRegistry()
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        reg.register(SpoolCollector(spool))
        Info("relay", "relay's version and node name", registry=reg).info(
            {"version": __version__, "node": node}
        )
        self._delivered = Counter(
            "relay_events_delivered", "Events a sink took", ["sink"], registry=reg
        )
        self._retried = Counter(
            "relay_send_retries",
            "Sends to a sink that failed and are tried again after a backoff",
            ["sink"],
            registry=reg,
        )
        self._dead = Counter(
            "relay_events_dead_lettered",
            "Events given up on for a sink and kept as dead letters",
            ["sink"],
            registry=reg,
        )
        self._send = Histogram(
            "relay_send_duration_seconds",
            "Time of one send to a sink (an event or a batch), failed or not",
            ["sink"],
            buckets=SEND_BUCKETS,
            registry=reg,
        )
        self._commands = Counter(
            "relay_commands",
            "Device commands that ended, by device and outcome",
            ["device", "outcome"],
            registry=reg,
        )
        self._reconnects = Counter(
            "relay_reconnects",
            'Connections re-established after the first ("mqtt", a sink, "@commands")',
            ["connection"],
            registry=reg,
        )
        self._devices = frozenset(devices)
        self._seen: set[str] = set()  # connections that were up once
        self._lock = threading.Lock()
        # Every configured label shows from the start, at 0: a series that appears only
        # with its first event makes rate() and alerts miss that event.
        for sink in sinks:
            for family in (self._delivered, self._retried, self._dead, self._send):
                family.labels(sink)
        for device in self._devices:
            for outcome in OUTCOMES:
                self._commands.labels(device, outcome)
        for connection in connections:
            self._reconnects.labels(connection)

    def delivered(self, sink: str, count: int) -> None:
        self._delivered.labels(sink).inc(count)

    def retried(self, sink: str) -> None:
        self._retried.labels(sink).inc()

    def dead_lettered(self, sink: str) -> None:
        self._dead.labels(sink).inc()

    def sending(self, sink: str) -> AbstractContextManager[object]:
        return self._send.labels(sink).time()

    def command(self, device: str, outcome: str) -> None:
        # The device comes from outside (the last level of an MQTT topic): only configured
        # names become label values, so a stranger cannot mint series.
        label = device if device in self._devices else UNKNOWN_DEVICE
        self._commands.labels(label, outcome).inc()

    def connected(self, connection: str) -> None:
        with self._lock:
            again = connection in self._seen
            self._seen.add(connection)
        reconnects = self._reconnects.labels(connection)  # shows 0 from the first connect
        if again:
            reconnects.inc()


class SpoolCollector(Collector):
    """Reads the spool when Prometheus scrapes: nothing is kept up to date in between."""

    def __init__(self, spool: Spool, *, wall: Callable[[], float] = time.time) -> None:
        self.spool = spool
        self._wall = wall

    def collect(self) -> Iterator[Metric]:
        try:
            stats, tallies = self.spool.stats(), self.spool.tallies()
        except SpoolError:
            return  # closed: the agent is stopping
        except sqlite3.Error as exc:
            log.warning("metrics: cannot read the spool: %s", exc)
            return
        now = self._wall()
        pending = GaugeMetricFamily(
            "relay_spool_pending_events", "Events waiting to be sent to a sink", labels=["sink"]
        )
        oldest = GaugeMetricFamily(
            "relay_spool_oldest_event_age_seconds",
            "Age of the oldest event waiting for a sink (0 when none waits)",
            labels=["sink"],
        )
        dead = GaugeMetricFamily(
            "relay_dead_letters", "Dead letters kept for a sink (relay dlq list)", labels=["sink"]
        )
        for sink in stats.sinks:
            pending.add_metric([sink.name], sink.depth)
            # Wall clock: a Pi without a real-time clock may have stored events before NTP
            # set its time, so an age can come out negative; it is then "just now".
            age = now - sink.oldest_at if sink.oldest_at is not None else 0.0
            oldest.add_metric([sink.name], max(age, 0.0))
            dead.add_metric([sink.name], sink.dead_letters)
        yield from (pending, oldest, dead)
        yield GaugeMetricFamily(
            "relay_spool_bytes", "Bytes the spool's events and dead letters take", stats.bytes
        )
        yield GaugeMetricFamily(
            "relay_spool_max_bytes", "The spool's size cap ([spool] max_size)", stats.max_bytes
        )
        yield CounterMetricFamily(
            "relay_spool_dropped_events",
            'Events dropped to make room (when_full = "drop_oldest"), since the file was made',
            stats.dropped,
        )
        yield _by_source(
            "relay_events_ingested",
            "Events stored in the spool, by source, since the file was made",
            tallies.ingested,
        )
        yield _by_source(
            "relay_events_rejected",
            "Input refused at the door (too large, bad topic) and dead-lettered, by source",
            tallies.rejected,
        )
        if stats.wear is not None:
            yield GaugeMetricFamily(
                "relay_disk_bytes_written_per_event",
                "Bytes the agent wrote to storage per event it stored, over the last hour "
                "(/proc/self/io: an SD card's wear)",
                stats.wear.bytes_per_event,
            )
        if stats.broker is not None:
            yield CounterMetricFamily(
                "relay_broker_dropped_messages",
                "Messages the MQTT broker said it dropped (all its clients; relay's may be "
                "among them), as relay saw its $SYS counter rise",
                stats.broker.dropped,
            )
            yield GaugeMetricFamily(
                "relay_broker_dropping",
                "1 while the MQTT broker's drop counter keeps rising",
                int(stats.broker.dropping),
            )


def _by_source(name: str, documentation: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["source"])
    for source, count in sorted(counts.items()):
        family.add_metric([source], count)
    return family
