"""What ``relay status`` and ``relay dlq list`` print: for a person, or as stable JSON."""

from __future__ import annotations

import time
from typing import Any

from relay.spool import DeadLetter, SpoolStats


def status_json(stats: SpoolStats, now: float | None = None) -> dict[str, Any]:
    """The ``relay status --json`` document. Keys are only ever added, never renamed."""
    now = time.time() if now is None else now
    return {
        "spool": {
            "path": stats.path,
            "durability": stats.durability,
            "bytes": stats.bytes,
            "max_bytes": stats.max_bytes,
            "rows": stats.rows,
            "dropped": stats.dropped,
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
            }
            for s in stats.sinks
        ],
    }


def status_text(stats: SpoolStats, now: float | None = None) -> str:
    now = time.time() if now is None else now
    fill = f"{human_bytes(stats.bytes)} of {human_bytes(stats.max_bytes)}"
    lines = [
        f"spool {stats.path} ({stats.durability}): {stats.rows} rows, {fill}"
        + (f", {stats.dropped} dropped" if stats.dropped else "")
    ]
    if not stats.sinks:
        lines.append("no sinks configured: events wait in the spool")
    for s in stats.sinks:
        oldest = human_age(_age(s.oldest_at, now))
        lines.append(
            f"sink {s.name}: {s.depth} queued (oldest {oldest}), {s.delivered} delivered, "
            f"{s.dead_letters} dead letters" + (f", head tried {s.attempts}x" if s.attempts else "")
        )
        if s.last_error:
            lines.append(
                f"  last error ({human_age(_age(s.last_error_at, now))} ago): {s.last_error}"
            )
    return "\n".join(lines)


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
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
