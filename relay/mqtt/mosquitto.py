"""What in a Mosquitto config on this box loses messages meant for relay, for ``relay
check-config`` to warn about.

Read as Mosquitto reads it (mosquitto.conf(5)): one ``option value`` per line, ``#``
comments, ``include_dir DIR`` reading DIR's ``*.conf`` files in name order, a later value of
a number or switch replacing an earlier one. The options below are global (they apply
whatever listener they follow). The settings, with Mosquitto's defaults:

- ``max_queued_messages`` (1000): the messages kept per session beyond those in flight,
  while relay is away or behind; the rest are dropped, with nothing to tell relay.
- ``max_queued_bytes`` (0, no limit): the same bound in payload bytes.
- ``persistence`` (false; Debian's file sets true): without it a broker restart forgets
  relay's session, and everything queued for relay with it.
- ``sys_interval`` (10; 0 turns ``$SYS`` off): without ``$SYS`` relay cannot see drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_QUEUE = 1000
SMALL_BYTES = 1024 * 1024  # a byte bound below this drops in minutes at a Pi's rates
ADVICE = "see README, 'The broker'"


@dataclass(frozen=True)
class BrokerSettings:
    """The global options that matter to relay, as the broker would end up with them."""

    max_queued_messages: int = DEFAULT_QUEUE
    max_queued_bytes: int = 0
    persistence: bool = False
    sys_interval: int = 10


def read(path: Path) -> BrokerSettings:
    """The settings ``path`` (and the files it includes) give; ``OSError`` if it cannot be
    read."""
    values: dict[str, str] = {}
    _read(path, values, depth=0)
    return BrokerSettings(
        max_queued_messages=_int(values.get("max_queued_messages"), DEFAULT_QUEUE),
        max_queued_bytes=_int(values.get("max_queued_bytes"), 0),
        persistence=values.get("persistence", "false").lower() == "true",
        sys_interval=_int(values.get("sys_interval"), 10),
    )


def problems(path: Path) -> list[str]:
    """One line per setting in ``path`` that loses (or hides the loss of) messages meant for
    relay: what, where, what to do. A file that cannot be read is one line too."""
    try:
        s = read(path)
    except OSError as exc:
        return [
            f"{path}: cannot read the broker's config ({exc.strerror}): its settings are not "
            "checked (run check-config as a user who may read it, or set mqtt.broker_config "
            '= "")'
        ]
    found = []
    if 0 < s.max_queued_messages <= DEFAULT_QUEUE:
        found.append(
            f"{path}: max_queued_messages is {s.max_queued_messages}: the broker keeps no more "
            "for relay while relay is away or behind, and drops the rest; raise it "
            f"({ADVICE})"
        )
    if 0 < s.max_queued_bytes < SMALL_BYTES:
        found.append(
            f"{path}: max_queued_bytes is {s.max_queued_bytes}: the broker drops what it "
            f"queues for relay beyond that; raise it ({ADVICE})"
        )
    if not s.persistence:
        found.append(
            f"{path}: persistence is off: a broker restart forgets relay's session and "
            f"everything queued for relay; set persistence true ({ADVICE})"
        )
    if s.sys_interval == 0:
        found.append(
            f"{path}: sys_interval is 0: with no $SYS figures relay cannot see the broker "
            f"drop messages; leave it at 10 ({ADVICE})"
        )
    return found


def _read(path: Path, values: dict[str, str], *, depth: int) -> None:
    if depth > 4:  # include_dir within include_dir, and deeper: not Mosquitto's way
        return
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # a comment is a whole line
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key == "include_dir" and value:
            for included in sorted(Path(value).glob("*.conf")):
                _read(included, values, depth=depth + 1)
        else:
            values[key] = value  # the options read here are global: the last one counts


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
