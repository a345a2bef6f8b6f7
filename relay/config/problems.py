"""pydantic's validation errors as lines for a person: ``key.path: what is wrong``.

The lines never include the offending value (it may be a secret).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

_TAGS = {"mqtt", "gpio", "http", "amqp", "redis"}


def problems(exc: ValidationError) -> list[str]:
    """One line per error of ``exc``, without the file name (the caller adds it)."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        lines.append(f"{_loc(err['loc'])}: {_message(err)}")
    return lines


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    prev: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(prev, int) and part in _TAGS:
            pass  # the discriminated union's tag ("sinks[1].http.url"): noise to a person
        else:
            out += ("." if out else "") + part
        prev = part
    return out or "(top level)"


def _message(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and its table)"
    if err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
        return "type is missing or unknown"
    return msg.removeprefix("Value error, ")


def first_line(exc: Exception) -> str:
    """The first line of ``exc``'s message: pydantic-settings appends the decoder's own
    multi-line report, which a one-line problem has no room for."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
