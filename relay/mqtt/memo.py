"""What relay last subscribed to at which broker, kept in ``state_dir`` across restarts.

MQTT 3.1.1 has no way to subscribe again without the broker resending every retained
message of the filter (3.8.4), so a restart of relay would turn each retained state into a
new event. When the broker says it kept our session, and the memo shows that session holds
exactly the subscriptions we want, relay does not subscribe again. Anything else (no memo,
another broker or client id, other filters or QoS, an unreadable file) means subscribe.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

FILE = "mqtt-subscriptions.json"


class SubscriptionMemo:
    def __init__(self, state_dir: Path | None, broker: str, client_id: str) -> None:
        self._path = state_dir / FILE if state_dir is not None else None
        self._key = {"broker": broker, "client_id": client_id}

    def holds(self, wanted: list[tuple[str, int]]) -> bool:
        """Whether the broker's kept session has exactly ``wanted`` (as far as we know)."""
        if self._path is None:
            return False
        try:
            memo = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return False
        return bool(memo == {**self._key, "filters": sorted([t, q] for t, q in wanted)})

    def save(self, wanted: list[tuple[str, int]]) -> None:
        """The broker granted ``wanted``; remember it (best effort: a failure only means
        subscribing again, and retained messages resent, after the next restart)."""
        if self._path is None:
            return
        memo = {**self._key, "filters": sorted([t, q] for t, q in wanted)}
        tmp = self._path.with_suffix(".tmp")
        try:
            # Its bytes on the disk before the rename, the rename before the session is
            # relied on: without the fsyncs a power cut left a 0-byte memo (ext4 need not
            # write a new file's data before its rename), relay subscribed anew at every
            # boot after one, and each retained message came back as a new event.
            with tmp.open("w") as f:
                f.write(json.dumps(memo))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
            _sync_dir(self._path.parent)
        except OSError as exc:
            log.debug("mqtt: cannot write %s: %s", self._path, exc)

    def forget(self) -> None:
        """Subscriptions are being changed: until the broker grants them, we do not know."""
        if self._path is not None:
            try:
                self._path.unlink(missing_ok=True)
                _sync_dir(self._path.parent)  # or a power cut could bring the memo back
            except OSError as exc:
                log.debug("mqtt: cannot remove %s: %s", self._path, exc)


def _sync_dir(path: Path) -> None:
    """Make a rename or an unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
