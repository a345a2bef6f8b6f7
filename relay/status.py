"""What ``relay status`` reads: the spool's figures for every configured sink, whether the
agent has run or not (``relay.report`` prints them).

A sink the agent has not registered yet (it never ran with this config, or ran before the
sink was added) is in the config but not in the spool file: it is shown as it will start,
``not started``, with nothing delivered. A spool file that does not exist yet (nothing ran
here, nothing was pushed) is not created: a status is a read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from relay.config import Settings
from relay.spool import SinkStats, Spool, SpoolStats


@dataclass(frozen=True)
class Status:
    stats: SpoolStats
    not_started: frozenset[str]  # configured sinks the agent has not registered yet
    exists: bool  # the spool file exists


def gather(settings: Settings) -> Status:
    names = [sink.name for sink in settings.sinks]
    path = settings.state_dir / "spool.db"
    if not path.exists():
        fresh = [SinkStats(name, 0, None, 0, None, None, 0, 0) for name in names]
        stats = SpoolStats(
            str(path),
            settings.spool.durability,
            0,
            int(settings.spool.max_size),
            0,
            0,
            sorted(fresh, key=lambda s: s.name),
        )
        return Status(stats, frozenset(names), exists=False)
    with Spool.configured(settings.spool, settings.state_dir) as spool:
        stats = spool.stats()
        new = spool.newcomers(names)
    sinks = sorted([*stats.sinks, *new], key=lambda s: s.name)  # as the file lists them
    return Status(replace(stats, sinks=sinks), frozenset(s.name for s in new), exists=True)
