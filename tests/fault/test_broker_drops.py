"""The broker's queue, before relay (P9): a Mosquitto that keeps 50 messages per session, relay
down while 300 are published. The broker acknowledged every one to the publisher and drops
250; relay cannot get them back, but it notices: one WARNING naming the broker and the
setting, and a ``relay status`` line, within 60 s of its start. With the default queue
(1000) nothing is dropped and nothing of the kind is said.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fault.harness import (
    AgentProcess,
    MqttNumbers,
    http_sink_part,
    mqtt_part,
    quiet,
)
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.http_server import RemoteServer
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@dataclass
class Outcome:
    status: str  # relay status, as a person reads it
    status_json: dict[str, Any]
    warnings: list[str]  # the WARNING lines of relay's second run
    warned_after: float | None  # seconds from that start to the drop warning


def run(tmp_path: Path, queue: int) -> Outcome:
    """Relay subscribes and stops; 300 are published; relay starts again and runs until
    its backlog is delivered and, if the broker drops, until it said so."""
    with PrivateMosquitto(tmp_path / "mosquitto", extra=f"max_queued_messages {queue}") as b:
        topic = unique("relayfault/")
        with quiet(RemoteServer()) as server:
            agent = AgentProcess(
                tmp_path / "agent", mqtt_part(b.port, topic), http_sink_part(server.url)
            )
            with agent, MqttNumbers(b.host, b.port, topic) as pub:
                agent.start(ready="mqtt: subscribed")
                # The counter the broker shows at relay's first run is where relay counts from.
                wait_until(lambda: "broker" in agent.status(), 20, "the broker's counter seen")
                assert agent.terminate() == 0, agent.tail()
                pub.publish(range(300))
                pub.wait_acked()
                mark = agent.start(ready="mqtt: subscribed")
                started, warned_after = agent.lines[mark].at, None
                if queue < 300:
                    warned_after = agent.wait_line("dropped 250 messages", 60, since=mark).at
                    warned_after -= started
                wait_until(lambda: agent.depths() == {"cloud": 0}, 30, "the backlog sent")
                outcome = Outcome(
                    agent.cli("status").stdout,
                    agent.status(),
                    [line.text for line in agent.find_all("WARNING", since=mark)],
                    warned_after,
                )
                assert agent.terminate() == 0, agent.tail()
    return outcome


def test_drops_at_the_broker_are_said_once(tmp_path: Path) -> None:
    out = run(tmp_path, queue=50)
    dropping = [w for w in out.warnings if "dropped" in w]
    assert len(dropping) == 1, out.warnings
    [warning] = dropping
    assert "the broker at 127.0.0.1:" in warning
    assert "messages for relay may be among them" in warning
    assert "max_queued_messages" in warning
    assert out.warned_after is not None and out.warned_after < 60
    [line] = [line for line in out.status.splitlines() if "dropped" in line]
    assert line.startswith("broker 127.0.0.1:") and "dropped 250 messages" in line
    assert out.status_json["broker"]["dropped"] == 250
    print(f"\nbroker drops: warned {out.warned_after:.1f}s after relay's start")


def test_no_drops_nothing_said(tmp_path: Path) -> None:
    out = run(tmp_path, queue=1000)
    # relay saw the broker's counter (the marker: it was there to see), and it did not move.
    assert out.status_json["broker"]["counter"] == 0, out.status_json
    assert out.status_json["broker"]["dropped"] == 0
    assert not [w for w in out.warnings if "dropped" in w], out.warnings
    assert not [line for line in out.status.splitlines() if line.startswith("broker ")]
