"""One power-cut run: the host's parts, the guest, the cuts, the ledger (see run.py and
README.md beside this file).

On the host: a private Mosquitto (unlimited queue), a receiver (HTTP), a publisher of numbered
QoS 1 messages (a trickle and bursts) and the killer. In the guest (:mod:`.image`,
:mod:`.guest`): ``relay run`` under systemd, MQTT source on the host's broker, HTTP sink to
the host's receiver, the spool on its own virtio disk. The killer pulls the guest's power
(SIGKILL of qemu) at random moments, seeded: during boot, during a burst, or in the steady
stream; after each cut the spool as left on the disk is checked, then the guest boots again.
After the last cut it boots for good, the rest is published and drained, and the ledger
(:mod:`.ledger`) is drawn up.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tests.fault.harness import (
    clean_env,
    http_numbers,
    http_sink_part,
    mqtt_part,
    numbered,
    quiet,
)
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.common import RELAY
from tests.helpers.http_server import RemoteServer
from tests.helpers.mqtt import Publisher
from tests.helpers.toml import table, write
from tests.helpers.wait import WaitTimeout, wait_until
from tests.powercut import image
from tests.powercut.common import HOST_IP, STATE_DIR
from tests.powercut.guest import Guest, SpoolAfterCut, spool_after_cut
from tests.powercut.ledger import Cut, Report, first_arrival_disorder
from tests.powercut.stream import BrokerAcks, Stream, broker_acks

TOPIC = "pc"
PREFIX = f"{TOPIC}/seq"  # numbers go to pc/seq/<n>; relay's event name is that topic
CLIENT_ID = "relay-powercut"
# One retained message on relay's topics, published before the first boot: relay should turn
# it into one event. Each time relay subscribes anew (its memo of the broker's session lost),
# the broker sends it again and relay spools it again, under a new id.
RETAINED = f"{TOPIC}/retained"
SUBSCRIBED = "mqtt: subscribed"
STARTED = "relay started"
BOOT_TIMEOUT = 180.0  # power-on to subscribed, at most (TCG on a loaded host)


class Skipped(Exception):
    """The run cannot happen here (no qemu, a config relay rejects); the message says why."""


class ConfigRejected(Skipped):
    """relay refuses the run's config (``relay check-config`` exit 78): a variant for a key
    this checkout does not have yet (say, ``commit_interval``)."""


@dataclass
class Options:
    cuts: int = 50
    events: int = 20_000
    durability: str = "full"
    spool: dict[str, str] = field(default_factory=dict)  # more [spool] keys, as TOML values
    seed: int | None = None
    rate: float = 5.0  # the trickle, per second
    expect_loss: bool = False
    workdir: Path | None = None
    cpus: int = 2


def relay_tables(opts: Options, broker_port: int, receiver_port: int) -> str:
    """The guest's config below its top-level keys: [spool] with ``durability`` and the
    extra keys, the broker and the receiver on the host (10.0.2.2 from inside)."""
    spool = table("spool", durability=opts.durability) + "".join(
        f"{k} = {v}\n" for k, v in opts.spool.items()
    )
    mqtt = mqtt_part(broker_port, TOPIC, host=HOST_IP, client_id=CLIENT_ID)
    # batch_max 20: one request per event through qemu's user-mode network (TCG) took
    # ~0.2 s here, so at the default of 1 the receiver fell ever further behind the stream
    # (and the final drain would take an hour). Bursts still leave a backlog in the spool.
    sink = http_sink_part(f"http://{HOST_IP}:{receiver_port}/events", batch_max=20)
    return spool + "\n" + mqtt + "\n" + sink


def relay_toml(tables: str) -> str:
    """The guest's whole /etc/relay.toml."""
    head = f'node = "powercut"\nstate_dir = "{STATE_DIR}"\nlog_level = "info"\n\n'
    return head + tables


def check_config(tables: str, workdir: Path) -> None:
    """``relay check-config`` of the guest's config on the host (this checkout): raises
    :class:`Skipped` if relay refuses it (exit 78: say, a [spool] key it does not know)."""
    path = write(
        workdir / "check.toml", tables, node="fault-node", state_dir=workdir / "state",
        log_level="info",
    )  # fmt: skip
    done = subprocess.run(
        [*RELAY, "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    if done.returncode == 78:
        raise ConfigRejected(f"relay rejects this config: {done.stderr.strip()}")
    if done.returncode != 0:
        raise RuntimeError(f"relay check-config exited {done.returncode}: {done.stderr}")


class PowerCuts:
    """One run: the host's parts, the guest, and the cuts. :meth:`run` returns the report."""

    def __init__(self, opts: Options, out: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.rng = random.Random(opts.seed)
        self.workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="relay-powercut-"))
        self.cuts: list[Cut] = []
        self.boot_offsets: list[int] = []  # the broker log's size at each power-on
        self.boot_requests: list[int] = []  # the receiver's request count at each power-on
        self.subscribed: list[float] = []
        self.lost: set[int] = set()  # acknowledged numbers the cuts so far lost
        self.stream: Stream  # set in run()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self) -> Report:
        reason = image.missing_tools()
        if reason:
            raise Skipped(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A reused --workdir: the last run's broker state (relay's session, its queue) and
        # consoles would mix into this run's ledger.
        shutil.rmtree(self.workdir / "mosquitto", ignore_errors=True)
        for old in self.workdir.glob("console-*.log"):
            old.unlink()
        mosq = PrivateMosquitto(self.workdir / "mosquitto", extra="max_queued_messages 0")
        with mosq, quiet(RemoteServer()) as server:
            tables = relay_tables(self.opts, mosq.port, server.port)
            check_config(tables, self.workdir)
            with Publisher(mosq.host, mosq.port) as pub:
                pub.wait([pub.publish(RETAINED, json.dumps({"retained": True}), retain=True)])
            started = time.monotonic()
            img = image.prepare(self.workdir / "guest", relay_toml(tables), log=self.out)  # type: ignore[arg-type]
            self.say(f"guest images ready in {time.monotonic() - started:.0f}s ({self.workdir})")
            stream = Stream(mosq.host, mosq.port, PREFIX, self.opts.events, self.opts.rate)
            try:
                with Guest(img, self.workdir, cpus=self.opts.cpus) as guest, stream:
                    self.stream = stream
                    return self._cuts(guest, mosq, server, img.data)
            finally:
                img.root.unlink(missing_ok=True)  # ~0.4 GB, remade in seconds

    # ------------------------------------------------------------------ the cuts

    def _power_on(self, guest: Guest, mosq: PrivateMosquitto, server: RemoteServer) -> int:
        self.boot_offsets.append(mosq.log_file.stat().st_size)
        self.boot_requests.append(len(server.received))
        return guest.boot()

    def _cuts(
        self, guest: Guest, mosq: PrivateMosquitto, server: RemoteServer, data: Path
    ) -> Report:
        opts = self.opts
        for k in range(1, opts.cuts + 1):
            mark = self._power_on(guest, mosq, server)
            how = "steady" if k == 1 else self.rng.choices(
                ["boot", "burst", "steady"], weights=[15, 40, 45]
            )[0]  # fmt: skip
            sub = self._drive(guest, mark, how, k)
            at = guest.cut()
            received = {n for n, _ in http_numbers(server, PREFIX)}
            spool = spool_after_cut(data, self.workdir / "scratch")
            acks = broker_acks(mosq.log_file, CLIENT_ID, PREFIX, self.boot_offsets)
            cut = Cut(
                index=k,
                how=how,
                after_s=at - guest.powered_on_at,
                subscribed_s=sub,
                started=bool(guest.find_all(STARTED, mark)),
                spool=spool,
            )
            self._ledger_at_cut(cut, acks, received, spool)
            self.cuts.append(cut)
            self.say(cut.line())
        return self._final(guest, mosq, server, data)

    def _drive(self, guest: Guest, mark: int, how: str, k: int) -> float | None:
        """Run one boot up to the moment of its cut; power-on to subscribed (None if the
        cut came first)."""
        rng, stream = self.rng, self.stream
        if how == "boot":
            expected = statistics.median(self.subscribed) if self.subscribed else 15.0
            time.sleep(rng.uniform(0.2, 1.0) * expected)
            found = guest.find_all(SUBSCRIBED, mark)
            return found[0].at - guest.powered_on_at if found else None
        line = guest.wait_line(SUBSCRIBED, BOOT_TIMEOUT, since=mark)
        sub = line.at - guest.powered_on_at
        self.subscribed.append(sub)
        if k == 1:
            stream.start()  # only now: the broker queues for a session that subscribed
        size = self._burst_size(k)
        if how == "burst":
            time.sleep(rng.uniform(0.0, 3.0))
            stream.burst(size)
            time.sleep(rng.uniform(0.05, 1.5))  # while relay takes the burst in
        else:
            run = rng.uniform(1.0, 15.0)
            burst_at = rng.uniform(0.0, 15.0)
            if burst_at < run:
                time.sleep(burst_at)
                stream.burst(size)
                time.sleep(run - burst_at)
            else:
                time.sleep(run)
        return sub

    def _burst_size(self, k: int) -> int:
        """This cycle's share of what is left to publish, less what the trickle brings."""
        cycles_left = self.opts.cuts - k + 2  # this one, the rest, and the final boot
        cycle_s = 25.0
        if self.cuts:
            cycle_s = statistics.mean(c.after_s for c in self.cuts) + 3.0
        share = self.opts.rate * cycle_s
        quota = max(0.0, self.stream.remaining / cycles_left - share)
        return int(quota * self.rng.uniform(0.5, 1.5))

    def _ledger_at_cut(
        self, cut: Cut, acks: BrokerAcks, received: set[int], spool: SpoolAfterCut
    ) -> None:
        acked = acks.through(len(self.boot_offsets) - 1)
        hands = acked - received - self.lost  # what an earlier cut lost is in no one's hands
        kept = hands & spool.undelivered()
        cut.acked, cut.received = len(acked), len(received)
        cut.in_hands, cut.kept = len(hands), len(kept)
        cut.lost = sorted(hands - kept)
        self.lost.update(cut.lost)

    # ------------------------------------------------------------------ the end

    def _final(
        self, guest: Guest, mosq: PrivateMosquitto, server: RemoteServer, data: Path
    ) -> Report:
        """Boot for good, publish the rest, drain, power off; the report."""
        mark = self._power_on(guest, mosq, server)
        line = guest.wait_line(SUBSCRIBED, BOOT_TIMEOUT, since=mark)
        self.subscribed.append(line.at - guest.powered_on_at)
        if not guest.find_all(STARTED, mark):
            guest.wait_line(STARTED, 30, since=mark)
        stream = self.stream
        stream.finish()
        stream.join(600)
        stream.wait_acked(120)
        self.say(f"published {stream.published}; draining")
        self._drain(mosq, server, stream.published)
        guest.cut()  # the end of the run, not a cut of the ledger
        final = spool_after_cut(data, self.workdir / "scratch")
        report = self._report(mosq, server, stream.published, final)
        report.critical = [f"boot {ln.boot}: {ln.text}" for ln in guest.find_all("CRITICAL")]
        report.retained = sum(1 for e in _accepted(server) if e.get("name") == RETAINED)
        lines = guest.find_all(SUBSCRIBED)
        # Boot 1 subscribes for the first time; every later one follows a cut.
        report.subscribed_after_cut = len({ln.boot for ln in lines} - {1})
        report.subscribed_anew = len({ln.boot for ln in lines if "(kept" not in ln.text} - {1})
        return report

    def _drain(self, mosq: PrivateMosquitto, server: RemoteServer, published: int) -> None:
        """Wait until the receiver has every number, or relay has acknowledged every
        number and nothing new arrived for 15 s (what is missing then is lost)."""
        want = set(range(published))
        last_change, seen = time.monotonic(), 0

        def drained() -> bool:
            nonlocal last_change, seen
            got = {n for n, _ in http_numbers(server, PREFIX)}
            if want <= got:
                return True
            if len(got) != seen:
                last_change, seen = time.monotonic(), len(got)
            elif time.monotonic() - last_change > 15:
                acks = broker_acks(mosq.log_file, CLIENT_ID, PREFIX, self.boot_offsets)
                return want <= acks.through(len(self.boot_offsets)) | got
            return False

        try:
            wait_until(drained, 300 + published / 20, "the drain", interval=0.5)
        except WaitTimeout:
            self.say("the drain timed out: what is missing is counted below")

    def _report(
        self, mosq: PrivateMosquitto, server: RemoteServer, published: int, final: SpoolAfterCut
    ) -> Report:
        acks = broker_acks(mosq.log_file, CLIENT_ID, PREFIX, self.boot_offsets)
        acked = acks.through(len(self.boot_offsets))
        deliveries = [n for n, _ in http_numbers(server, PREFIX)]
        got = set(deliveries)
        self._duplicates_per_cut(server)
        return Report(
            durability=self.opts.durability,
            cuts=self.cuts,
            published=published,
            acknowledged=len(acked),
            lost=sorted(acked - got),
            missing_unacked=sorted(set(range(published)) - got - acked),
            deliveries=len(deliveries),
            distinct=len(got),
            out_of_order=first_arrival_disorder(deliveries),
            final_integrity=final.integrity,
            dropped_by_broker=acks.dropped,
            boot_to_subscribed=self.subscribed,
        )

    def _duplicates_per_cut(self, server: RemoteServer) -> None:
        """Deliveries of an already-delivered number in the boot after each cut."""
        seen: set[int] = set()
        bounds = [*self.boot_requests, len(server.received)]
        for boot in range(len(self.boot_requests)):
            dups = 0
            for request in server.received[bounds[boot] : bounds[boot + 1]]:
                if not 200 <= request.status < 300:
                    continue
                try:
                    events = request.events
                except ValueError:  # cut short by a power cut: delivered nothing
                    continue
                for n, _ in numbered(events, PREFIX):
                    dups += n in seen
                    seen.add(n)
            if boot >= 1:  # boot b follows cut b (boot 0 follows no cut)
                self.cuts[boot - 1].duplicates = dups


def _accepted(server: RemoteServer) -> list[dict[str, Any]]:
    """Every event the receiver accepted (2xx), skipping bodies a power cut truncated."""
    events: list[dict[str, Any]] = []
    for request in list(server.received):
        if 200 <= request.status < 300:
            with contextlib.suppress(ValueError):
                events.extend(request.events)
    return events
