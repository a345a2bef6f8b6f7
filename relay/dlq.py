"""What ``relay dlq`` does with the dead letters in the spool file: list them, queue them
again, purge them; whether the agent runs or not. A spool file that does not exist yet
(nothing ran here) is not made: it holds no dead letters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from relay.config import Settings
from relay.doorbell import ring
from relay.spool import COMMAND_REJECTS, INGEST_REJECTS, DeadLetter, Spool


def dead_letters(settings: Settings, sink: str | None, ids: Sequence[str]) -> list[DeadLetter]:
    with _spool(settings, sink) as spool:
        return [] if spool is None else spool.dead_letters(sink, ids)


def redeliver(settings: Settings, sink: str | None, ids: Sequence[str]) -> int:
    """Queue them again, each for its own sink; how many."""
    with _spool(settings, sink) as spool:
        n = 0 if spool is None else spool.redeliver(sink, ids)
    ring(settings.state_dir)
    return n


def purge(settings: Settings, sink: str | None, ids: Sequence[str]) -> int:
    """Delete them for good; how many."""
    with _spool(settings, sink) as spool:
        return 0 if spool is None else spool.purge(sink, ids)


@contextmanager
def _spool(settings: Settings, sink: str | None) -> Iterator[Spool | None]:
    """The spool (None: no file yet), once ``sink`` is known to name something."""
    if not (settings.state_dir / "spool.db").exists():
        _check_sink(settings, sink, kept=False)
        yield None
        return
    with Spool.configured(settings.spool, settings.state_dir) as spool:
        if sink is not None:
            _check_sink(settings, sink, kept=bool(spool.dead_letters(sink)))
        yield spool


def _check_sink(settings: Settings, sink: str | None, *, kept: bool) -> None:
    """A --sink that names nothing is a mistake to say (``ValueError``), not an empty list.
    It may name a configured sink, a pseudo-sink of input refused at the door, or a sink
    no longer configured whose dead letters the spool kept."""
    names = [s.name for s in settings.sinks]
    if sink is None or kept or sink in {*names, INGEST_REJECTS, COMMAND_REJECTS}:
        return
    raise ValueError(
        f"no sink named {sink!r} in the config (sinks: {', '.join(names) or 'none'}; "
        f"input refused at the door: {INGEST_REJECTS}, {COMMAND_REJECTS})"
    )
