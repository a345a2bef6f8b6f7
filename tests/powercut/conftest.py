"""The power-cut test boots a virtual machine again and again (minutes): it is not part of
the default ``pytest`` run. ``pytest -m powercut tests/powercut`` runs it; ``make powercut``
runs the full proof without pytest (tests/powercut/run.py)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, beside the only test that uses it, so --strict-markers accepts it.
    config.addinivalue_line(
        "markers", "powercut: boots relay in a VM and pulls its power (select with -m powercut)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the power-cut test out unless the marker expression asks for it."""
    if "powercut" in (config.option.markexpr or ""):
        return
    dropped = [item for item in items if item.get_closest_marker("powercut")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("powercut")]
