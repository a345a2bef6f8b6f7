"""MQTT test helpers: a QoS 1 publisher that knows what the broker acknowledged, and a
reader of what the spool holds."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Publisher:
    """Publishes with QoS 1; ``acked`` counts the PUBACKs received from the broker."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.acked_mids: set[int] = set()
        self._lock = threading.Condition()
        self.client.on_publish = self._on_publish
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._lock:
            self.acked_mids.add(mid)
            self._lock.notify_all()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> int:
        return int(self.client.publish(topic, payload, qos=qos, retain=retain).mid)

    def wait(self, mids: list[int], timeout: float = 60) -> None:
        with self._lock:
            ok = self._lock.wait_for(lambda: set(mids) <= self.acked_mids, timeout)
        assert ok, f"{len(set(mids) - self.acked_mids)} publishes not acknowledged by the broker"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spooled(state_dir: Path) -> list[dict[str, Any]]:
    """Every event row in the spool file, in spool order (read-only, the agent may run)."""
    db = state_dir / "spool.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [json.loads(r[0]) for r in conn.execute("SELECT body FROM events ORDER BY seq")]
    finally:
        conn.close()


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"
