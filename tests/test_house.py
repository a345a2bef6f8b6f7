"""The house rules of docs/ARCHITECTURE.md that a grep can hold: each concern in one home."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
RELAY = ROOT / "relay"
TESTS = ROOT / "tests"


def _modules(under: Path) -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(under.rglob("*.py"))}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_no_module_over_400_lines() -> None:
    long = {_rel(p): n for p in RELAY.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_paho_client_is_made_in_one_module_outside_the_sources() -> None:
    makers = set()
    for path, tree in _modules(RELAY).items():
        for node in ast.walk(tree):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and ast.unparse(called) == "mqtt.Client":
                makers.add(_rel(path))
    assert makers == {"relay/mqtt/connection.py"}


def test_tables_are_created_in_the_schema_module_only() -> None:
    creating = {_rel(p) for p in RELAY.rglob("*.py") if "CREATE TABLE" in p.read_text()}
    assert creating == {"relay/spool/schema.py"}


def test_wiring_is_typed_and_the_agent_does_not_probe() -> None:
    wiring = ast.parse((RELAY / "wiring.py").read_text())
    assert not [n.lineno for n in ast.walk(wiring) if isinstance(n, ast.Name) and n.id == "Any"]
    agent = ast.parse((RELAY / "agent.py").read_text())
    probes = [
        n.lineno
        for n in ast.walk(agent)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id in {"getattr", "hasattr"}
    ]
    assert probes == []


def test_one_polling_helper_in_the_tests() -> None:
    """wait_until, in tests/helpers/wait.py; no other loop that waits, against a monotonic
    deadline, for a condition to end it (a loop that samples until a time is not one)."""
    helper = TESTS / "helpers" / "wait.py"
    defined, loops = [], []
    for path, tree in _modules(TESTS).items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "wait_until":
                defined.append(_rel(path))
            if isinstance(node, ast.While) and "monotonic" in ast.unparse(node.test):
                ends = any(isinstance(n, (ast.Break, ast.Return)) for n in ast.walk(node))
                if ends and path != helper:
                    loops.append(f"{_rel(path)}:{node.lineno}")
    assert defined == [_rel(helper)]
    assert loops == []
