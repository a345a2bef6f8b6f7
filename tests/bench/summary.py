"""What every benchmark prints with ``--json``: the rows of tests/bench/run_all's table,
and that table.

A row is one figure of relay beside its baseline measured in the same run (None: there is
none that means anything), e.g.::

    {"figure": "HTTP drain, batch_max 100", "unit": "ev/s", "relay": 13741.0,
     "baseline": 1148.0, "vs": "plain httpx POST loop"}

The JSON list is the last line of the bench's standard output, so that whatever a child
process (a broker, an agent) writes there before it does not get in the way.
"""

from __future__ import annotations

import json
from typing import TypedDict


class Row(TypedDict):
    figure: str
    unit: str  # "ev/s", "msg/s", "ms", "MB", "B/event", "ticks", ...
    relay: float
    baseline: float | None
    vs: str  # what the baseline is; "" when there is none


def row(figure: str, unit: str, relay: float, baseline: float | None = None, vs: str = "") -> Row:
    return Row(figure=figure, unit=unit, relay=relay, baseline=baseline, vs=vs)


def emit(rows: list[Row]) -> None:
    print(json.dumps(rows), flush=True)


def parse(stdout: str) -> list[Row]:
    """The rows a bench printed with ``--json``; ``ValueError`` if there are none."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ValueError("no output")
    rows = json.loads(lines[-1])
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "figure" in r for r in rows):
        raise ValueError("the last line is not a list of rows")
    return rows


def number(value: float, unit: str) -> str:
    """Digits that mean something on a noisy machine, and the unit."""
    if unit in {"ms", "MB"}:
        return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}"


HEAD = ("figure", "relay", "baseline", "ratio", "baseline is")
TEXT = {0, 4}  # the columns of words, aligned left; the others hold numbers


def cells(r: Row) -> tuple[str, ...]:
    baseline = r["baseline"]
    return (
        r["figure"],
        number(r["relay"], r["unit"]),
        "-" if baseline is None else number(baseline, r["unit"]),
        f"{r['relay'] / baseline:.2f}x" if baseline else "-",
        r["vs"] or "-",
    )


def table(rows: list[Row]) -> list[str]:
    """A Markdown table, numbers aligned right."""
    lines = [HEAD, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]

    def fmt(line: tuple[str, ...]) -> str:
        padded = (
            t.ljust(w) if i in TEXT else t.rjust(w)
            for i, (t, w) in enumerate(zip(line, widths, strict=True))
        )
        return f"| {' | '.join(padded)} |"

    rule = "|".join(
        "-" * (w + 2) if i in TEXT else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    )
    return [fmt(HEAD), f"|{rule}|", *map(fmt, lines[1:])]
