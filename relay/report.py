"""What ``relay status`` and ``relay dlq list`` print: for a person, or as stable JSON."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from relay.spool import BrokerDrops, DeadLetter, SinkStats, SpoolStats

WIDTH = 80  # what the table is laid out for (a wider terminal gets longer errors)
ELLIPSIS = "\u2026"
HEADER = ("SINK", "STATE", "QUEUED", "OLDEST", "DLQ", "LAST ERROR")
RIGHT = {2, 3, 4}  # the columns of numbers and ages, aligned right
MAX_SINK = 20  # a longer sink name is cut (relay status --json has it whole)
MIN_ERROR = 24  # the last error keeps at least this much room, taken from the name


def status_json(
    stats: SpoolStats,
    now: float | None = None,
    *,
    broker: str | None = None,
    not_started: Collection[str] = (),
) -> dict[str, Any]:
    """The ``relay status --json`` document. Keys are only ever added, never renamed.
    ``broker``: the MQTT broker's address, when the config has one; ``not_started``: the
    configured sinks the agent has not registered yet (``relay.status``)."""
    now = time.time() if now is None else now
    doc = {
        "spool": {
            "path": stats.path,
            "durability": stats.durability,
            "bytes": stats.bytes,
            "max_bytes": stats.max_bytes,
            "rows": stats.rows,
            "dropped": stats.dropped,
            "disk_free_bytes": stats.disk_free,
            # What the agent wrote to storage per event stored (SD card wear), and over
            # how many seconds up to an hour; null until it has measured.
            "bytes_written_per_event": stats.wear.bytes_per_event if stats.wear else None,
            "bytes_written_window_s": stats.wear.window_s if stats.wear else None,
        },
        "sinks": [
            {
                "name": s.name,
                "depth": s.depth,
                "oldest_age_s": _age(s.oldest_at, now),
                "head_attempts": s.attempts,
                "last_error": s.last_error,
                "last_error_age_s": _age(s.last_error_at, now),
                "delivered": s.delivered,
                "dead_letters": s.dead_letters,
                "started": s.name not in not_started,  # false: relay has not run with it yet
            }
            for s in stats.sinks
        ],
    }
    if stats.broker is not None:
        doc["broker"] = _broker_json(stats.broker, broker, now)
    return doc


def _broker_json(drops: BrokerDrops, address: str | None, now: float) -> dict[str, Any]:
    return {
        "address": address,
        "dropped": drops.dropped,
        "dropping": drops.dropping,
        "last_drop_age_s": _age(drops.last_drop_at, now),
        "counter": drops.counter,
        "visible": drops.visible,
    }


def status_text(
    stats: SpoolStats,
    now: float | None = None,
    *,
    width: int = WIDTH,
    broker: str | None = None,
    not_started: Collection[str] = (),
    no_file: bool = False,
) -> str:
    """``relay status`` for a person: the spool, then a table with a row per sink. No line
    is longer than ``width``: long paths, names and errors are cut with an ellipsis.
    ``broker``: the MQTT broker's address, for the line on what it dropped; ``not_started``:
    the configured sinks the agent has not registered yet; ``no_file``: the spool file does
    not exist yet."""
    now = time.time() if now is None else now
    lines = [_spool_line(stats, width), *_disk_line(stats, width), *_wear_line(stats, now, width)]
    if no_file:
        lines.append(
            clip("no spool file yet: relay has not run here and nothing was pushed", width)
        )
    lines += _broker_lines(stats.broker, broker or "the MQTT broker", now, width)
    if not stats.sinks:
        return "\n".join([*lines, "no sinks configured: events wait in the spool"])
    rows = [
        (
            s.name,
            "not started" if s.name in not_started else sink_state(s),
            f"{s.depth:,}",
            human_age(_age(s.oldest_at, now)),
            f"{s.dead_letters:,}",
            _last_error(s, now),
        )
        for s in stats.sinks
    ]
    return "\n".join([*lines, "", *_table([HEADER, *rows], width)])


def sink_state(s: SinkStats) -> str:
    """What the spool knows of a sink, whether or not the agent runs: its head failed
    (and waits for its next attempt), or events wait, or nothing does."""
    if s.attempts:
        return f"retrying (attempt {s.attempts})"
    return "queued" if s.depth else "caught up"


def _last_error(s: SinkStats, now: float) -> str:
    if not s.last_error:
        return "-"
    # One line, and no escape sequences from a far end's error text reach the terminal.
    text = "".join(c if c.isprintable() else "?" for c in " ".join(s.last_error.split()))
    return f"{human_age(_age(s.last_error_at, now))} ago: {text}"


def _spool_line(stats: SpoolStats, width: int) -> str:
    tail = f": {human_bytes(stats.bytes)} of {human_bytes(stats.max_bytes)}"
    tail += f", {stats.dropped:,} dropped" if stats.dropped else ""
    tail += f", durability {stats.durability}"
    head = "spool "
    path = stats.path
    room = width - len(head) - len(tail)
    if len(path) > room:  # keep the file name, lose the start of the directory
        path = ELLIPSIS + path[len(path) - max(room - 1, 0) :]
    return clip(head + path + tail, width)


def _disk_line(stats: SpoolStats, width: int) -> list[str]:
    """A warning when the disk would fill before the spool reaches ``max_size``: then a full
    disk, not the cap, is what refuses events (and ``when_full`` does not apply)."""
    room = max(stats.max_bytes - stats.bytes, 0)
    if stats.disk_free is None or stats.disk_free >= room:
        return []
    free, grow = human_bytes(stats.disk_free), human_bytes(room)
    return [
        clip(f"low disk: {free} free, spool may grow {grow}; free space or lower max_size", width)
    ]


def _wear_line(stats: SpoolStats, now: float, width: int) -> list[str]:
    """What the agent writes to its storage per event: an SD card's wear."""
    wear = stats.wear
    if wear is None:
        return []
    when = "" if now - wear.at < 3600 else f", measured {human_age(now - wear.at)} ago"
    return [
        clip(
            f"disk writes: {human_bytes(wear.bytes_per_event)} per event over the last "
            f"{human_age(wear.window_s)}{when} (relay's own, /proc/self/io)",
            width,
        )
    ]


def _broker_lines(drops: BrokerDrops | None, where: str, now: float, width: int) -> list[str]:
    """What relay saw of the broker dropping messages, when there is something to say."""
    if drops is None:
        return []
    if drops.dropped:
        still = ", still dropping" if drops.dropping else ""
        age = human_age(_age(drops.last_drop_at, now))
        return [
            clip(
                f"broker {where} dropped {drops.dropped:,} messages (the last {age} ago{still}):"
                " messages for relay may be among them; raise max_queued_messages",
                width,
            )
        ]
    if drops.visible is False:
        return [clip(f"broker {where}: relay cannot see its drops (no $SYS figures)", width)]
    return []


def _table(rows: list[tuple[str, ...]], width: int) -> list[str]:
    """Columns two spaces apart; the last one gets what is left of ``width``."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    widths[0] = min(widths[0], MAX_SINK)
    left = width - sum(widths) - 2 * len(widths)
    if left < MIN_ERROR:
        widths[0] = max(widths[0] - (MIN_ERROR - left), len(HEADER[0]))
        left = width - sum(widths) - 2 * len(widths)
    widths.append(max(left, 1))
    lines = []
    for row in rows:
        cells = [
            clip(cell, w).rjust(w) if i in RIGHT else clip(cell, w).ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(clip("  ".join(cells).rstrip(), width))
    return lines


def clip(text: str, width: int) -> str:
    """``text``, cut to ``width`` characters with an ellipsis when longer."""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS if width > 0 else ""


def dead_letter_json(dl: DeadLetter) -> dict[str, Any]:
    return {
        "sink": dl.sink,
        "id": dl.event_id,
        "reason": dl.reason,
        "attempts": dl.attempts,
        "dead_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(dl.dead_at)),
        "event": dl.body.decode("utf-8", "replace"),
    }


def dead_letter_text(dl: DeadLetter) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dl.dead_at))
    return f"{dl.sink}  {dl.event_id}  {when}  tried {dl.attempts}x  {dl.reason}"


def _age(then: float | None, now: float) -> float | None:
    return None if then is None else round(max(now - then, 0.0), 3)


def human_age(seconds: float | None) -> str:
    """3s, 4m, 2h, 5d: the largest whole unit (59m, not 1h, for 59 minutes 59 seconds)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
