"""P1 across power cuts, the short form: 5 cuts of a guest running relay with durability
"full", and not one acknowledged event lost, the spool sound after every cut.

Not in the default run (see conftest.py): ``pytest -m powercut tests/powercut``. The full
proof is ``make powercut`` (tests/powercut/run.py). ``RELAY_POWERCUT_CUTS``,
``RELAY_POWERCUT_EVENTS`` and ``RELAY_POWERCUT_SEED`` change the figures. Where no guest can
be built or booted (no qemu, no kernel to be had) the test skips, and under CI
(``RELAY_REQUIRE_BROKERS=1``) fails instead.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from tests.helpers.common import REQUIRE_BROKERS
from tests.powercut.common import ImageError
from tests.powercut.powercuts import Options, PowerCuts, Skipped

CUTS = int(os.environ.get("RELAY_POWERCUT_CUTS", "5"))
EVENTS = int(os.environ.get("RELAY_POWERCUT_EVENTS", str(400 * CUTS)))
SEED = int(os.environ.get("RELAY_POWERCUT_SEED", str(random.SystemRandom().randrange(10**6))))

pytestmark = [pytest.mark.powercut, pytest.mark.broker, pytest.mark.slow]


@pytest.mark.timeout(1800)  # a cold cache builds the guest first (~1-2 min)
def test_power_cuts_lose_nothing_acknowledged(tmp_path: Path) -> None:
    opts = Options(cuts=CUTS, events=EVENTS, durability="full", seed=SEED, workdir=tmp_path)
    print(f"\npower cuts: {CUTS} cuts, {EVENTS} events, seed {SEED}")
    try:
        report = PowerCuts(opts, sys.stdout).run()
    except (Skipped, ImageError) as why:
        if REQUIRE_BROKERS:
            pytest.fail(f"no guest here (RELAY_REQUIRE_BROKERS=1: it must run): {why}")
        pytest.skip(f"no guest here: {why}")
    for line in report.details():
        print(line)
    print(report.summary())
    assert report.problems(expect_loss=False) == [], report.details()
    assert report.lost == []
    assert report.integrity_ok()
    assert len(report.cuts) == CUTS
