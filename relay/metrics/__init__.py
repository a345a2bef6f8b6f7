"""What relay counts, for Prometheus: the calls the components make, and a base that does
nothing with them (relay without ``[metrics]``, which imports no metrics library at all).

    __init__.py    ``Metrics``: the calls (forwarders, the command executor, connections)
    prometheus.py  ``PrometheusMetrics``: the metric objects in relay's own registry, and
                   ``SpoolCollector``, which reads the spool's figures at scrape time
    server.py      ``MetricsServer``: the HTTP endpoint (``[metrics] listen``), a component

Only ``relay.wiring`` picks the real one, and only when ``[metrics] listen`` is set. What the
spool knows (queue depth, the oldest event, bytes, events stored per source, dead letters)
is never pushed from here: the collector reads it when Prometheus asks, so nothing polls and
an idle agent stays asleep.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

# The connection label of the AMQP command queue (no sink can be named so); the others are
# "mqtt" and the AMQP and Redis sinks' names.
COMMAND_QUEUE = "@commands"


class Metrics:
    """The calls the components make. This base records nothing.

    Every method is quick, thread-safe and never raises: a metric must not be able to fail
    a delivery. Labels are bounded values only (a sink, device or connection named in the
    config, an outcome), never an event id or a command's arguments.
    """

    def delivered(self, sink: str, count: int) -> None:
        """``sink`` took ``count`` more events."""

    def retried(self, sink: str) -> None:
        """A send to ``sink`` failed; it will be tried again after a backoff."""

    def dead_lettered(self, sink: str) -> None:
        """An event was given up on for ``sink`` and kept as a dead letter."""

    def sending(self, sink: str) -> AbstractContextManager[object]:
        """Times one ``send`` to ``sink`` (one event or a batch), whether it works or not."""
        return contextlib.nullcontext()

    def command(self, device: str, outcome: str) -> None:
        """A device command ended: ``ok``, ``failed``, ``expired`` or ``interrupted``."""

    def connected(self, connection: str) -> None:
        """``connection`` ("mqtt", or a sink's name) is up; every time after the first is a
        reconnect."""


NO_METRICS = Metrics()

__all__ = ["NO_METRICS", "Metrics"]
