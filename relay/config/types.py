"""The value types of the config file and the base of every table.

``Duration`` ("30s", "5m", "7d", "250ms" or seconds), ``Size`` ("256MB", "256MiB" or bytes),
``OptionalPath`` ("" means unset), URL checks for validators, and ``mask_url`` for printing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def _parse_duration(value: Any) -> Any:
    """ "30s", "5m", "7d", "250ms" or a bare number of seconds, as a timedelta."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError('expected a duration such as "30s", "5m", "7d" or "250ms"')
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    return value


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{round(seconds * 1000)}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration),
    PlainSerializer(_format_duration, return_type=str, when_used="json"),
]


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


# An optional file: "" (how the example config shows "not set") means None, not ".".
OptionalPath = Annotated[Path | None, BeforeValidator(_empty_is_none)]
Size = ByteSize  # "256MB" (powers of 1000) or "256MiB" (powers of 1024), or bytes


class Section(BaseModel):
    """Every table of the file: unknown keys are errors, values are frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_url(url: str, schemes: tuple[str, ...]) -> str:
    """``url`` unchanged if it parses, has one of ``schemes`` and a host; else ValueError
    with a message for a person (never the URL itself: it may hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL with a host")
    return url


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for printing and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
