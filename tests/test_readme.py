"""README's list of commands ("Using it") is what `relay --help` offers: every subcommand,
and every option of each (the common --config aside), so that a command or a flag added to
the CLI cannot be left out of it (`relay demo` and `relay dlq purge --all` were)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from relay.cli import _parser

README = Path(__file__).parent.parent / "README.md"


def using_it() -> str:
    """The command block of README's "Using it"."""
    section = README.read_text().split("\n## Using it\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def listed(block: str, name: str) -> str:
    """The lines of ``relay NAME`` in ``block``, with the comment lines that continue them."""
    found: list[str] = []
    taking = False
    for line in block.splitlines():
        if re.match(rf"relay {name}\b", line):
            taking = True
        elif not line.startswith(" "):
            taking = False
        if taking:
            found.append(line)
    return "\n".join(found)


def test_every_command_and_option_is_listed() -> None:
    block = using_it()
    for name, parser in subcommands().items():
        lines = listed(block, name)
        assert lines, f"README's 'Using it' leaves out relay {name}"
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in {"--help", "--config"}:
                    assert option in lines, f"README's 'Using it' leaves out relay {name} {option}"
