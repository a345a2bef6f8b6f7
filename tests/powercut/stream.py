"""The MQTT side of the power-cut harness: the numbered stream in, and what the broker saw.

:class:`Stream` publishes ``{"n": n}`` to ``<prefix>/<n>`` with QoS 1 from the host: a steady
trickle, bursts at full speed when asked, and the rest at once when told to finish.

:func:`broker_acks` reads the private Mosquitto's log (``log_type all``) for what relay
acknowledged: each ``Sending PUBLISH to <relay> (..., m<mid>, '<prefix>/<n>', ...)`` names
the number behind a packet id, and ``Received PUBACK from <relay> (Mid: <mid>, ...)`` is
relay's acknowledgement of it. Packet ids are per session and reused only once acknowledged,
so the last PUBLISH sent with an id is the one its PUBACK answers. The number in the topic is
what makes this exact: the log never shows payloads.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.helpers.mqtt import Publisher


class Stream:
    """Numbers ``0 .. total-1`` published in order from a background thread.

    ``rate`` per second while trickling; :meth:`burst` publishes the next ``count`` at
    once; :meth:`finish` publishes whatever is left at once. :attr:`published` counts the
    publishes handed to the client; :meth:`wait_acked` waits for the broker's PUBACKs.
    """

    def __init__(self, host: str, port: int, prefix: str, total: int, rate: float) -> None:
        self.prefix = prefix
        self.total = total
        self.rate = rate
        self.published = 0
        self.bursts: list[tuple[float, int, int]] = []  # (monotonic, first n, count)
        self._pub = Publisher(host, port)
        self._mids: list[int] = []
        self._burst = 0
        self._finish = False
        self._stop = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="powercut-stream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def burst(self, count: int) -> None:
        """Publish the next ``count`` numbers at full speed (on top of the trickle)."""
        with self._wake:
            self._burst += count
            self._wake.notify_all()

    def finish(self) -> None:
        """Publish the rest at full speed, then stop."""
        with self._wake:
            self._finish = True
            self._wake.notify_all()

    @property
    def remaining(self) -> int:
        return self.total - self.published

    def _run(self) -> None:
        next_at = time.monotonic()
        while self.published < self.total:
            with self._wake:
                self._wake.wait_for(
                    lambda: self._stop or self._finish or self._burst > 0,
                    max(0.0, next_at - time.monotonic()),
                )
                if self._stop:
                    return
                if self._finish:
                    count = self.remaining
                elif self._burst > 0:
                    count, self._burst = min(self._burst, self.remaining), 0
                else:
                    count = 1
            if count > 1:
                self.bursts.append((time.monotonic(), self.published, count))
            for _ in range(count):
                self._publish_one()
            if count == 1:
                next_at = max(next_at + 1 / self.rate, time.monotonic() - 1.0)

    def _publish_one(self) -> None:
        n = self.published
        self._mids.append(self._pub.publish(f"{self.prefix}/{n}", json.dumps({"n": n})))
        self.published += 1

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the publisher did not finish within {timeout:g}s")

    def wait_acked(self, timeout: float) -> None:
        """Wait until the broker acknowledged every publish so far (then it holds them
        for relay's session)."""
        self._pub.wait(list(self._mids), timeout)

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(10)
        self._pub.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class BrokerAcks:
    """What the broker's log says relay acknowledged, per boot of the guest.

    ``acked[b]``: the numbers whose PUBACK from relay arrived while boot ``b`` ran (a
    number may be acked in several boots: a redelivery relay stored again or recognised).
    ``sent[b]``: PUBLISH packets sent to relay in boot ``b`` (redeliveries included);
    ``connects[b]``: relay's connections; ``dropped``: the broker's own drop notices (which
    would make the ledger unsound: see the README).
    """

    acked: list[set[int]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    connects: list[int] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def through(self, boot: int) -> set[int]:
        """Every number relay acknowledged in boots ``0 .. boot``."""
        out: set[int] = set()
        for acked in self.acked[: boot + 1]:
            out |= acked
        return out


def broker_acks(log: Path, client_id: str, prefix: str, boot_offsets: list[int]) -> BrokerAcks:
    """Parse the Mosquitto log; a line at byte offset ``o`` belongs to the boot whose
    ``boot_offsets`` entry (the log's size when that boot was powered on) is the last one
    at or below ``o``. Lines before the first boot are ignored."""
    boots = len(boot_offsets)
    view = BrokerAcks(acked=[set() for _ in range(boots)], sent=[0] * boots, connects=[0] * boots)
    cid = re.escape(client_id)
    sending = re.compile(rf"Sending PUBLISH to {cid} \(d\d, q\d, r\d, m(\d+), '([^']*)'")
    puback = re.compile(rf"Received PUBACK from {cid} \(Mid: (\d+),")
    connected = re.compile(rf"New client connected from \S+ as {cid} ")
    head = prefix + "/"
    mids: dict[int, int] = {}
    offset = 0
    with open(log, "rb") as f:
        for raw in f:
            at, offset = offset, offset + len(raw)
            boot = bisect.bisect_right(boot_offsets, at) - 1
            if boot < 0:
                continue
            line = raw.decode("utf-8", "replace")
            if m := sending.search(line):
                topic, mid = m.group(2), int(m.group(1))
                if topic.startswith(head) and topic[len(head) :].isdigit():
                    mids[mid] = int(topic[len(head) :])
                    view.sent[boot] += 1
                else:  # another message (the retained one) has this packet id now
                    mids.pop(mid, None)
            elif m := puback.search(line):
                n = mids.get(int(m.group(1)))
                if n is not None:
                    view.acked[boot].add(n)
            elif connected.search(line):
                view.connects[boot] += 1
            elif f"Outgoing messages are being dropped for client {client_id}" in line:
                # Mosquitto's own notice (not relay's $SYS drop counter, whose topic name
                # the PUBLISH lines to relay carry)
                view.dropped.append(line.strip())
    return view
