"""The power-cut ledger: per cut, what relay had acknowledged, what had reached the receiver,
what the disk kept; at the end, what was lost.

"Acknowledged by relay" is the broker's word: the numbers whose PUBACK from relay the private
Mosquitto logged (:func:`tests.powercut.stream.broker_acks`). A message relay did not
acknowledge stays queued for relay's persistent session (unlimited queue, a broker that is
never stopped) and comes again after the next boot, so it cannot be lost: it is only late.
Hence two checks that must agree: every acknowledged number reaches the receiver, and every
published number does (what was published and never arrived must have been acknowledged,
else the broker dropped it and the ledger is unsound: that is reported as such).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from tests.fault.harness import ranges
from tests.powercut.guest import SpoolAfterCut


@dataclass
class Cut:
    """One power cut and the boot it ended."""

    index: int
    how: str  # "boot" (before relay subscribed), "burst" (during a burst), "steady"
    after_s: float  # from power-on to the cut
    subscribed_s: float | None  # from power-on to relay subscribed (None: cut before)
    started: bool  # the console (journald) showed relay's start in this boot
    acked: int = 0  # numbers relay had acknowledged, all boots so far
    received: int = 0  # distinct numbers at the receiver when the power went
    in_hands: int = 0  # acknowledged, not yet at the receiver
    kept: int = 0  # of those, undelivered in the spool the cut left
    lost: list[int] = field(default_factory=list)  # of those, in neither place: this cut's loss
    duplicates: int | None = None  # deliveries of delivered numbers in the next boot (at the end)
    spool: SpoolAfterCut | None = None

    def line(self) -> str:
        sub = f"{self.subscribed_s:5.1f}s" if self.subscribed_s is not None else "   -  "
        spool = self.spool
        integrity = spool.integrity if spool else "?"
        if spool and spool.fsck != "ok":
            integrity += f" (fs: {spool.fsck})"
        if spool and spool.note:
            integrity += f" ({spool.note})"
        return (
            f"cut {self.index:3d} {self.how:6s} at {self.after_s:5.1f}s, subscribed {sub}"
            f"{'' if self.started or self.how == 'boot' else ' (no start seen!)'}: "
            f"acked {self.acked:6d}, received {self.received:6d}, in relay's hands "
            f"{self.in_hands:4d}, kept {self.kept:4d}, lost {len(self.lost):4d}, "
            f"duplicates after {'-' if self.duplicates is None else self.duplicates:>4}, "
            f"integrity {integrity}"
        )


@dataclass
class Report:
    """The run's outcome; :meth:`summary` is the last line the harness prints."""

    durability: str
    cuts: list[Cut]
    published: int
    acknowledged: int
    lost: list[int]  # acknowledged by relay, never at the receiver
    missing_unacked: list[int]  # published, never acknowledged, never received: unsound
    deliveries: int
    distinct: int
    out_of_order: list[int]
    final_integrity: str
    dropped_by_broker: list[str]
    boot_to_subscribed: list[float]
    critical: list[str] = field(default_factory=list)  # relay's CRITICAL lines (spool set aside)
    retained: int = 0  # deliveries of the one retained message (1 is right)
    subscribed_after_cut: int = 0  # boots after a cut that got as far as subscribed
    subscribed_anew: int = 0  # of those, the boots in which relay sent SUBSCRIBE again

    @property
    def duplicates(self) -> int:
        return self.deliveries - self.distinct

    def integrity_ok(self) -> bool:
        checks = [c.spool for c in self.cuts if c.spool is not None and c.spool.exists]
        return all(s.integrity == "ok" and s.fsck == "ok" for s in checks) and (
            self.final_integrity == "ok"
        )

    def problems(self, *, expect_loss: bool) -> list[str]:
        """What makes the run fail (losses only without ``expect_loss``)."""
        out = []
        if self.lost and not expect_loss:
            out.append(f"{len(self.lost)} acknowledged events lost: {ranges(self.lost, 8)}")
        if self.missing_unacked:
            out.append(
                f"{len(self.missing_unacked)} events never acknowledged and never received "
                f"(the broker dropped them, or relay never drained): "
                f"{ranges(self.missing_unacked, 8)}"
            )
        if self.dropped_by_broker:
            out.append(f"the broker dropped messages: {self.dropped_by_broker[0]}")
        if not self.integrity_ok():
            bad = [c.line() for c in self.cuts if c.spool and c.spool.integrity != "ok"]
            out.append(f"integrity check failed: {bad[:3]} final {self.final_integrity}")
        if self.critical:
            out.append(f"relay logged CRITICAL (a spool set aside?): {self.critical[0]}")
        if self.out_of_order:
            out.append(f"first arrivals out of order: {ranges(self.out_of_order, 8)}")
        unseen = [c.index for c in self.cuts if c.how != "boot" and not c.started]
        if unseen:
            out.append(f"relay's start not seen on the console in the boots of cuts {unseen}")
        return out

    def details(self) -> list[str]:
        """The lines above the summary: per cut, then the totals."""
        lines = [c.line() for c in self.cuts]
        times = self.boot_to_subscribed
        dups = [c.duplicates or 0 for c in self.cuts]
        lines.append(
            f"durability {self.durability}: published {self.published}, "
            f"relay acknowledged {self.acknowledged}, lost {len(self.lost)}"
            + (f" ({ranges(self.lost, 8)})" if self.lost else "")
        )
        at_cuts = set().union(*(c.lost for c in self.cuts))
        if at_cuts != set(self.lost):
            # The cuts' accounts (from the spool each left) and the end's disagree: say how.
            lines.append(
                f"the cuts counted {len(at_cuts)} lost, the end {len(self.lost)}: "
                f"{len(at_cuts - set(self.lost))} of the cuts' arrived after all, "
                f"{len(set(self.lost) - at_cuts)} lost that no cut's spool explains"
            )
        if times:
            lines.append(
                f"power-on to relay subscribed: median {statistics.median(times):.1f}s, "
                f"max {max(times):.1f}s over {len(times)} boots"
            )
        if dups:
            lines.append(
                f"duplicates per cut: median {statistics.median(dups):g}, max {max(dups)}, "
                f"total {self.duplicates} ({self.deliveries} deliveries, "
                f"{self.distinct} distinct)"
            )
        lines.append(
            f"retained message: delivered {self.retained} times; relay subscribed anew in "
            f"{self.subscribed_anew} of {self.subscribed_after_cut} boots after a cut (each "
            f"makes the broker resend it, and relay spool it again under a new id)"
        )
        checked = sum(1 for c in self.cuts if c.spool is not None and c.spool.exists)
        lines.append(
            f"integrity: {'ok' if self.integrity_ok() else 'FAILED'} after {checked} cuts "
            f"(PRAGMA integrity_check on the spool each cut left, e2fsck after its journal "
            f"replay) and at the end ({self.final_integrity})"
        )
        return lines

    def summary(self) -> str:
        return (
            f"power cuts: {len(self.cuts)}, acknowledged: {self.acknowledged}, "
            f"lost: {len(self.lost)}, duplicates: {self.duplicates}"
        )


def first_arrival_disorder(deliveries: list[int]) -> list[int]:
    """Numbers whose first arrival came after a higher number's (P3: in order)."""
    seen: set[int] = set()
    top = -1
    out = []
    for n in deliveries:
        if n in seen:
            continue
        seen.add(n)
        if n < top:
            out.append(n)
        top = max(top, n)
    return out
