"""A redelivery is not a new event (P2): relay killed between the spool commit and the MQTT
PUBACK (the ``after_commit_before_ack`` crash point), again and again, while numbered
messages stream in. The broker sends each stored-but-unacknowledged message again (same
packet id, DUP set) on the resumed session; relay recognises it, acknowledges it, and does not
store it again. So the spool never holds a number twice, and the receiver sees no number
under two event ids: every duplicate it sees is a re-send of the same event.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from tests.fault.harness import (
    AgentProcess,
    Ledger,
    MqttNumbers,
    http_numbers,
    http_sink_part,
    integrity_check,
    mqtt_part,
    quiet,
)
from tests.helpers.brokers import PrivateMosquitto
from tests.helpers.http_server import RemoteServer
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EVENTS = 3000  # fewer than the spool keeps keyed rows for (KEEP_KEYED): every row stays
CRASHES = 12
RECOGNISED = "the broker sent again messages relay had stored"


def spooled_numbers(state_dir: Path, topic: str) -> Counter[int]:
    """How many rows the spool holds for each number (delivered keyed rows are kept)."""
    conn = sqlite3.connect(f"file:{state_dir / 'spool.db'}?mode=ro", uri=True)
    try:
        bodies = [json.loads(r[0]) for r in conn.execute("SELECT body FROM events")]
    finally:
        conn.close()
    return Counter(b["payload"]["n"] for b in bodies if b["name"] == f"{topic}/seq")


def test_messages_sent_again_after_a_crash_are_not_stored_twice(
    tmp_path: Path, mosquitto: PrivateMosquitto
) -> None:
    rng = random.Random(7)
    topic = unique("relayfault/")
    with quiet(RemoteServer()) as server:
        agent = AgentProcess(
            tmp_path, mqtt_part(mosquitto.port, topic), http_sink_part(server.url, batch_max=50)
        )
        with agent, MqttNumbers(mosquitto.host, mosquitto.port, topic) as pub:
            agent.start(ready="mqtt: subscribed")
            pub.start(range(EVENTS), rate=EVENTS / 15)
            crashed = 0
            for _ in range(CRASHES):
                agent.restart(f"after_commit_before_ack:{rng.randint(1, 40)}", ready=None)
                try:
                    agent.wait_exit(15)
                    crashed += 1
                except AssertionError:  # the stream ended before its N-th commit
                    agent.kill()
            recognised_runs = len(
                {line.run for line in agent.find_all(RECOGNISED)}
            )  # runs that found the broker sending again what they had stored
            agent.start(ready="mqtt: subscribed")
            pub.join()
            pub.wait_acked()
            ledger = Ledger(range(EVENTS))
            wait_until(
                lambda: (
                    ledger.replace("cloud", http_numbers(server, f"{topic}/seq"))
                    or ledger.complete("cloud")
                ),
                90,
                "every event at the receiver",
                detail=lambda: ledger.report("cloud").line() + "\n" + agent.tail(),
            )
            spooled = spooled_numbers(agent.state_dir, topic)
            # Acknowledged, not only recognised: a clean restart gets nothing sent again.
            assert agent.terminate() == 0, agent.tail()
            mark = agent.start(ready="mqtt: subscribed")
            wait_until(lambda: set(agent.depths().values()) == {0}, 30, "an empty queue")
            assert agent.find(RECOGNISED, since=mark) is None, agent.text(mark)
    report = ledger.check("cloud", disruptions=agent.kills)
    print(
        f"\nredelivery: {crashed} crashes between commit and PUBACK "
        f"({recognised_runs} runs recognised messages sent again); {report.line()}"
    )
    assert crashed >= CRASHES // 2, "the crash point rarely fired: nothing was tested"
    assert recognised_runs >= 1, "no run saw a redelivery: nothing was tested"
    assert report.respooled == 0, report.line()
    twice = {n: k for n, k in spooled.items() if k > 1}
    assert not twice, f"numbers stored twice: {sorted(twice)[:20]}"
    assert sorted(spooled) == list(range(EVENTS))
    assert integrity_check(agent.state_dir) == "ok"
