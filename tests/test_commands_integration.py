"""Device commands end to end: inputs (MQTT topic, `relay command`), the executor, real
devices (an HTTP service on loopback, an MQTT topic on the real Mosquitto)."""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from relay.commands import CommandExecutor
from relay.mqtt.connection import MqttConnection
from relay.spool import COMMAND_REJECTS, Spool
from tests.helpers import toml
from tests.helpers.agent import running_agent
from tests.helpers.commands import executed, outcomes
from tests.helpers.common import RELAY, need_service
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mqtt import Publisher, unique
from tests.helpers.wait import wait_until


def config(device_url: str, cmd_topic: str, *more: str, **commands: Any) -> str:
    """The shared Mosquitto, commands on ``cmd_topic/+`` run by the "heater" at
    ``device_url``, and ``more`` parts; ``commands`` adds to (or replaces) the keys of
    ``[commands]``."""
    return toml.document(
        toml.mqtt(1883),
        toml.commands(mqtt_topic=f"{cmd_topic}/+", **{"ttl_s": 30, "timeout_s": 10, **commands}),
        toml.http_device(device_url, name="heater", actions=["on", "off"]),
        *more,
    )


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, "command", *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def parts(agent: Any) -> tuple[MqttConnection, CommandExecutor]:
    mqtt_source = next(c for c in agent.components if isinstance(c, MqttConnection))
    executor = next(c for c in agent.components if isinstance(c, CommandExecutor))
    wait_until(mqtt_source.subscribed.is_set, 10, "the command subscription")
    return mqtt_source, executor


def marker_done(pub: Publisher, topic: str, state_dir: Path) -> None:
    """Send a command for no device after the others, over MQTT (which keeps their order),
    and wait for its outcome: the executor runs commands one at a time in the order they came,
    so once it has failed the marker, every command before it has had its outcome and
    nothing more of them will reach a device."""
    pub.wait([pub.publish(f"{topic}/marker", json.dumps({"id": "marker", "action": "on"}))])
    wait_until(lambda: "marker" in outcomes(state_dir), 20, "the marker's outcome")


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def publish_amqp(queue: str, bodies: list[dict[str, Any]]) -> None:
    with pika.BlockingConnection(pika.URLParameters(AMQP_URL)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        for body in bodies:
            channel.basic_publish("", queue, json.dumps(body).encode())


def delete_queue(queue: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(AMQP_URL)) as conn:
        conn.channel().queue_delete(queue)


@pytest.fixture(autouse=True)
def broker() -> None:
    need_service("Mosquitto", 1883)


def test_one_at_a_time_across_inputs(write_config: Callable[..., Path], state_dir: Path) -> None:
    need_service("RabbitMQ", 5672)
    topic, queue = unique("relaytest/"), unique("relay-test-commands-")
    with RemoteServer(lambda r, n: Reply(200, delay=0.04)) as device:
        cfg = write_config(config(device.url, topic, amqp_queue=queue, amqp_url=AMQP_URL))
        with running_agent(cfg) as agent, Publisher() as pub:
            parts(agent)
            mqtt_ids = [f"m{i}" for i in range(20)]
            amqp_ids = [f"a{i}" for i in range(15)]
            cli_ids = [f"c{i}" for i in range(15)]
            clis = [
                threading.Thread(target=cli, args=(cfg, "heater", "on", "--id", i)) for i in cli_ids
            ]
            for t in clis:
                t.start()
            publish_amqp(queue, [{"device": "heater", "action": "on", "id": i} for i in amqp_ids])
            pub.wait(
                [
                    pub.publish(f"{topic}/heater", json.dumps({"id": i, "action": "off"}))
                    for i in mqtt_ids
                ]
            )
            for t in clis:
                t.join()
            try:
                wait_until(lambda: len(device.received) == 50, 30, "50 commands run")
            except AssertionError:
                got = executed(device)
                missing = sorted(set(mqtt_ids + amqp_ids + cli_ids) - set(got))
                raise AssertionError(f"{len(got)} ran; missing {missing}") from None
            marker_done(pub, topic, state_dir)
        delete_queue(queue)
    runs = sorted(device.received, key=lambda r: r.at)
    overlaps = [(a, b) for a, b in itertools.pairwise(runs) if b.at < a.done_at]
    assert not overlaps, f"{len(overlaps)} commands ran at the same time"
    order = executed(device)
    assert [i for i in order if i.startswith("m")] == mqtt_ids  # FIFO per input
    assert [i for i in order if i.startswith("a")] == amqp_ids
    assert sorted(order) == sorted(mqtt_ids + amqp_ids + cli_ids)  # each once
    results = outcomes(state_dir)
    assert {i: results[i]["status"] for i in order} == dict.fromkeys(order, "ok")
    assert [results[i]["source"] for i in ("m0", "a0", "c0")] == ["mqtt", "amqp", "cli"]


def test_unreachable_device_retries_the_same_command_then_the_rest(
    write_config: Callable[..., Path], state_dir: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here until the test says so
    cfg = write_config(config(f"http://127.0.0.1:{port}/rpc", unique("relaytest/")))
    with running_agent(cfg) as agent:
        _, executor = parts(agent)
        ids = [cli(cfg, "heater", action).stdout.strip() for action in ("on", "off", "on")]
        wait_until(lambda: executor.attempts >= 3, 20, "3 refused attempts")
        with RemoteServer(port=port) as device:
            wait_until(lambda: len(outcomes(state_dir)) == 3, 20, "all three outcomes")
            assert executed(device) == ids  # the first exactly once, then the rest in order
    assert [outcomes(state_dir)[i]["status"] for i in ids] == ["ok", "ok", "ok"]


def test_command_stuck_behind_a_stall_expires(
    write_config: Callable[..., Path], state_dir: Path
) -> None:
    with RemoteServer(lambda r, n: Reply(200, delay=5 if n == 0 else 0)) as device:
        cfg = write_config(config(device.url, unique("relaytest/"), ttl_s=2))
        with running_agent(cfg):
            slow = cli(cfg, "heater", "on").stdout.strip()
            wait_until(lambda: len(device.received) == 1, 10)
            late = cli(cfg, "heater", "off").stdout.strip()
            wait_until(lambda: late in outcomes(state_dir), 20, "the late command's outcome")
        assert executed(device) == [slow]  # never run
    result = outcomes(state_dir)
    assert result[slow]["status"] == "ok" and result[slow]["duration_ms"] >= 5000
    assert result[late]["status"] == "expired"


def test_same_id_runs_once(write_config: Callable[..., Path], state_dir: Path) -> None:
    topic = unique("relaytest/")
    with RemoteServer() as device:
        cfg = write_config(config(device.url, topic))
        with running_agent(cfg) as agent, Publisher() as pub:
            parts(agent)
            for _ in range(3):
                pub.wait(
                    [pub.publish(f"{topic}/heater", json.dumps({"id": "once", "action": "on"}))]
                )
            again = cli(cfg, "heater", "on", "--id", "once")
            wait_until(lambda: "once" in outcomes(state_dir), 10)
            marker_done(pub, topic, state_dir)
        assert executed(device) == ["once"]
    # A retry is not a failure (exit 0); it says what became of the command, not queued again.
    assert (again.returncode, again.stdout) == (0, "once\n")
    assert re.fullmatch(
        r"relay command: command once (is queued|is running|ran) already.*: not queued again\n",
        again.stderr,
    ), again.stderr


def test_command_wait_prints_the_outcome(
    write_config: Callable[..., Path], state_dir: Path
) -> None:
    with RemoteServer() as device:
        cfg = write_config(config(device.url, unique("relaytest/")))
        with running_agent(cfg):
            ok = cli(cfg, "heater", "on", "--wait")
            bad = cli(cfg, "heater", "explode", "--wait")
    assert ok.returncode == 0 and ok.stdout.splitlines()[-1] == "ok"
    assert bad.returncode == 1 and "failed: heater has no action 'explode'" in bad.stdout
    unknown = cli(cfg, "toaster", "on")
    assert unknown.returncode == 2 and "no device named 'toaster'" in unknown.stderr


def test_mqtt_device_and_bad_commands(write_config: Callable[..., Path], state_dir: Path) -> None:
    topic, lamp_topic = unique("relaytest/"), unique("relaytest/lamp-")
    seen: list[bytes] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda c, u, m: seen.append(m.payload)
    watcher.connect("127.0.0.1", 1883)
    watcher.subscribe(lamp_topic, qos=1)
    watcher.loop_start()
    try:
        with RemoteServer() as device:
            cfg = write_config(config(device.url, topic, toml.mqtt_device(lamp_topic, name="lamp")))
            with running_agent(cfg) as agent, Publisher() as pub:
                parts(agent)
                pub.wait(
                    [
                        pub.publish(f"{topic}/lamp", b"on"),
                        pub.publish(f"{topic}/lamp", b"{not json"),
                        pub.publish(f"{topic}/garage", b"on"),
                    ]
                )
                wait_until(lambda: seen == [b'{"state": "on"}'], 10, "the lamp's payload")
                wait_until(lambda: len(outcomes(state_dir)) == 2, 10)
                with Spool.open(state_dir) as spool:
                    rejects = spool.dead_letters(COMMAND_REJECTS)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    statuses = sorted((o["device"], o["status"]) for o in outcomes(state_dir).values())
    assert statuses == [("garage", "failed"), ("lamp", "ok")]
    [reject] = rejects
    assert reject.reason.startswith("bad command: ")


@pytest.mark.slow
def test_kill_9_during_commands_never_runs_one_twice(
    write_config: Callable[..., Path], state_dir: Path, relay_env: dict[str, str]
) -> None:
    with RemoteServer(lambda r, n: Reply(200, delay=0.3)) as device:
        cfg = write_config(config(device.url, unique("relaytest/")))
        ids = []
        for _ in range(20):
            with subprocess.Popen(
                [*RELAY, "run", "--config", str(cfg)],
                stderr=subprocess.PIPE,
                text=True,
                env=relay_env,
            ) as agent:
                assert agent.stderr is not None
                for line in agent.stderr:
                    if "relay started" in line:
                        break
                before = len(device.received)
                ids.append(cli(cfg, "heater", "on").stdout.strip())
                wait_until(
                    lambda before=before: len(device.received) > before,
                    10,
                    "the device to take the command",
                )
                agent.send_signal(signal.SIGKILL)  # while the device is still acting on it
                agent.wait()
        with running_agent(cfg):  # one last start settles the 20th
            wait_until(lambda: len(outcomes(state_dir)) == 20, 20, "20 outcomes")
        runs = executed(device)
    assert sorted(runs) == sorted(ids), "a command ran twice or not at all"
    results = outcomes(state_dir)
    assert {results[i]["status"] for i in ids} <= {"interrupted", "ok"}
    print(
        f"20 kills: {sum(results[i]['status'] == 'interrupted' for i in ids)} interrupted, "
        f"{sum(results[i]['status'] == 'ok' for i in ids)} finished before the kill"
    )
