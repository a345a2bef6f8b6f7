"""What device-command tests look at: the commands a device received, and the outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relay.spool import Spool
from tests.helpers.http_server import RemoteServer


def executed(server: RemoteServer) -> list[str]:
    """Command ids in the order the device received them."""
    return [json.loads(r.body)["id"] for r in server.received]


def outcomes(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Outcome payloads by command id, from the spool file."""
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["probe"])  # the first sink ever sees everything spooled
        events = [r.event for r in spool.lease("probe", 10_000).records]
    return {e.payload["id"]: e.payload for e in events if e.name.startswith("command.")}
