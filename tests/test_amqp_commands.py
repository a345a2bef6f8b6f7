"""Device commands from an AMQP queue: prefetch 1, acked only after the outcome, a
redelivery after a crash skipped. Against the real RabbitMQ on 127.0.0.1:5672."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.sources.amqp import AmqpCommandSource
from tests.helpers import toml
from tests.helpers.agent import running_agent
from tests.helpers.brokers import free_port
from tests.helpers.commands import executed, outcomes
from tests.helpers.common import RELAY, need_service
from tests.helpers.faultproxy import FaultProxy
from tests.helpers.http_server import RemoteServer, Reply
from tests.helpers.mqtt import unique
from tests.helpers.wait import wait_until

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture
def queue() -> Iterator[str]:
    need_service("RabbitMQ", 5672)
    name = unique("relay-test-commands-")
    yield name
    with pika.BlockingConnection(pika.URLParameters(URL)) as conn:
        conn.channel().queue_delete(name)


def publish(queue: str, *bodies: dict[str, object]) -> None:
    with pika.BlockingConnection(pika.URLParameters(URL)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        for body in bodies:
            channel.basic_publish(
                "", queue, json.dumps(body).encode(), pika.BasicProperties(delivery_mode=2)
            )


def counts(queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of ``queue``, as the broker sees them."""
    out = subprocess.run(
        [
            "rabbitmqctl",
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        name, ready, unacked = line.split()
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue}")


def config(device_url: str, queue: str, **commands: object) -> str:
    """Commands from ``queue``, run by the "heater" at ``device_url``; ``commands`` adds to
    (or replaces) the keys of ``[commands]``."""
    keys = {"amqp_queue": queue, "amqp_url": URL, "ttl_s": 60, **commands}
    return toml.commands(**keys) + toml.http_device(device_url, name="heater")


def test_acked_only_after_the_outcome(
    queue: str, write_config: Callable[..., Path], state_dir: Path
) -> None:
    # The device holds each command 8 s: rabbitmqctl, which reads the counts, can take a few
    # seconds on a loaded machine, and the check must come while a1 is still in hand.
    with RemoteServer(lambda r, n: Reply(200, delay=8)) as device:
        cfg = write_config(config(device.url, queue))
        with running_agent(cfg):
            publish(
                queue,
                {"device": "heater", "action": "on", "id": "a1"},
                {"device": "heater", "action": "off", "id": "a2"},
            )
            wait_until(lambda: len(device.received) == 1, 15, "the device to take a1")
            assert counts(queue) == (1, 1)  # a1 in hand and unacked, a2 not yet delivered
            wait_until(lambda: len(outcomes(state_dir)) == 2, 40, "both outcomes (8 s each)")
            wait_until(lambda: counts(queue) == (0, 0), 10, "both acked")
    assert executed(device) == ["a1", "a2"]
    assert {o["source"] for o in outcomes(state_dir).values()} == {"amqp"}


def test_bad_messages_are_dead_lettered_and_acked(
    queue: str, write_config: Callable[..., Path], state_dir: Path
) -> None:
    with RemoteServer() as device:
        cfg = write_config(config(device.url, queue))
        with running_agent(cfg):
            publish(
                queue,
                {"device": "heater", "action": "on; reboot"},
                {"device": "toaster", "action": "on", "id": "t"},
            )
            wait_until(lambda: "t" in outcomes(state_dir), 10)
            wait_until(lambda: counts(queue) == (0, 0), 10, "both acked")
    assert outcomes(state_dir)["t"]["status"] == "failed"
    listed = subprocess.run(
        [*RELAY, "dlq", "list", "--sink", "@commands", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "bad command: action must be" in listed
    assert executed(device) == []


@pytest.mark.slow
def test_killed_mid_command_is_redelivered_and_skipped(
    queue: str, write_config: Callable[..., Path], state_dir: Path, relay_env: dict[str, str]
) -> None:
    with RemoteServer(lambda r, n: Reply(200, delay=2)) as device:
        cfg = write_config(config(device.url, queue))
        with subprocess.Popen(
            [*RELAY, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=relay_env
        ) as agent:
            assert agent.stderr is not None
            for line in agent.stderr:
                if "consuming commands" in line:
                    break
            publish(queue, {"device": "heater", "action": "on", "id": "k1"})
            wait_until(lambda: len(device.received) == 1, 15, "the device to take k1")
            agent.send_signal(signal.SIGKILL)
            agent.wait()
        with running_agent(cfg):
            wait_until(lambda: "k1" in outcomes(state_dir), 15, "k1's outcome")
            wait_until(lambda: counts(queue) == (0, 0), 15, "the redelivery to be acked")
    assert executed(device) == ["k1"]  # never twice
    assert outcomes(state_dir)["k1"]["status"] == "interrupted"


def check_config(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, "check-config", "--config", str(cfg)], capture_output=True, text=True, check=False
    )


def test_amqp_password_file_supplies_the_password(
    queue: str, write_config: Callable[..., Path], state_dir: Path, tmp_path: Path
) -> None:
    """``commands.amqp_url`` names the user only; ``amqp_password_file`` holds the password
    (as ``password_file`` does for an AMQP sink), and it never shows in check-config."""
    secret = tmp_path / "amqp.pass"
    secret.write_text("guest\n")
    with RemoteServer() as device:
        cfg = write_config(
            config(
                device.url,
                queue,
                amqp_url="amqp://guest@127.0.0.1:5672/%2F",
                amqp_password_file=secret,
            )
        )
        with running_agent(cfg):
            publish(queue, {"device": "heater", "action": "on", "id": "pw1"})
            wait_until(lambda: len(outcomes(state_dir)) == 1, 20, "the outcome")
        shown = check_config(cfg)
    assert executed(device) == ["pw1"]
    assert shown.returncode == 0, shown.stderr
    assert "amqp://guest:***@127.0.0.1" in shown.stdout and "guest:guest" not in shown.stdout


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ({"amqp_url": "amqp://127.0.0.1/"}, "needs a user name in amqp_url"),
        ({}, "amqp_password_file needs amqp_url"),
    ],
    ids=["a url without a user", "no url"],
)
def test_amqp_password_file_needs_a_url_with_a_user(
    url: dict[str, str], error: str, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("do-not-print")
    cfg = write_config(toml.commands(**url, amqp_password_file=tmp_path / "pw"))
    done = check_config(cfg)
    assert done.returncode == 78
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"relay: {cfg}: commands: ") and error in line
    assert "do-not-print" not in done.stderr + done.stdout


def test_a_reconnect_of_the_command_queue_is_counted_in_the_metrics(
    queue: str, write_config: Callable[..., Path], state_dir: Path
) -> None:
    """relay_reconnects_total{connection="@commands"}: shown at 0 from the start, 1 after
    the link to RabbitMQ was reset and relay consumes again; commands still run."""
    port = free_port()

    def reconnects() -> float | None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "relay_reconnects_total" and sample.labels == {
                    "connection": "@commands"
                }:
                    return sample.value
        return None

    with RemoteServer() as device, FaultProxy("127.0.0.1", 5672) as proxy:
        proxied = URL.replace(":5672", f":{proxy.port}")
        cfg = write_config(
            config(device.url, queue, amqp_url=proxied), toml.metrics(f"127.0.0.1:{port}")
        )
        with running_agent(cfg) as agent:
            source = next(c for c in agent.components if isinstance(c, AmqpCommandSource))
            wait_until(source.connected.is_set, 15, "the command queue")
            assert reconnects() == 0
            source.connected.clear()
            proxy.reset_all()
            wait_until(source.connected.is_set, 30, "consuming again")
            assert reconnects() == 1
            publish(queue, {"device": "heater", "action": "on", "id": "r1"})
            wait_until(lambda: len(outcomes(state_dir)) == 1, 20, "the outcome")
    assert executed(device) == ["r1"]
