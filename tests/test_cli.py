"""The command line of DESIGN.md, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import relay
from relay.agent import Agent
from relay.config import load
from relay.doorbell import Doorbell, ring
from relay.errors import ConfigError
from relay.spool import Spool
from tests.helpers import toml
from tests.helpers.common import RELAY
from tests.helpers.wait import wait_until


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


SINK = toml.http_sink("http://127.0.0.1:9/")


@pytest.fixture
def cfg(write_config: Callable[..., Path]) -> Path:
    return write_config(SINK)


def test_version(relay_env: dict[str, str]) -> None:
    result = run(["--version"], relay_env)
    assert result.returncode == 0 and result.stdout.strip() == f"relay {relay.__version__}"


def test_usage_error_exits_2(relay_env: dict[str, str]) -> None:
    assert run(["frobnicate"], relay_env).returncode == 2
    assert run([], relay_env).returncode == 2


def test_push_then_status(cfg: Path, relay_env: dict[str, str], state_dir: Path) -> None:
    relay_env["RELAY_CONFIG"] = str(cfg)
    result = run(["push", "door opened", "--payload", '{"state": "open"}'], relay_env)
    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    assert len(event_id) == 32
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["cloud"])
        [record] = spool.lease("cloud", 10).records
    assert (record.event.id, record.event.name, record.event.source) == (
        event_id,
        "door opened",
        "push",
    )
    assert record.event.payload == {"state": "open"} and record.event.node == "test-node"

    status = json.loads(run(["status", "--json"], relay_env).stdout)
    assert status["sinks"][0]["name"] == "cloud"
    assert status["sinks"][0]["depth"] == 1
    text = run(["status"], relay_env).stdout
    [row] = [line.split() for line in text.splitlines() if line.startswith("cloud ")]
    assert row[:3] == ["cloud", "queued", "1"]


def test_push_rejects_bad_payload_and_name(cfg: Path, relay_env: dict[str, str]) -> None:
    bad = run(["push", "x", "--payload", "{nope", "--config", str(cfg)], relay_env)
    assert bad.returncode == 2 and "--payload is not valid JSON" in bad.stderr
    assert run(["push", "", "--config", str(cfg)], relay_env).returncode == 2


def test_push_when_full_fails_clearly(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    cfg = write_config(toml.spool(max_size="400B"), SINK)
    assert run(["push", "a", "--config", str(cfg)], relay_env).returncode == 0
    result = run(["push", "b", "--payload", '"' + "x" * 300 + '"', "--config", str(cfg)], relay_env)
    assert result.returncode == 1
    assert result.stderr.startswith("relay push: spool full (")
    assert result.stderr.count("\n") == 1


def test_push_with_memory_spool_says_why_not(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    cfg = write_config(toml.spool(durability="memory"))
    result = run(["push", "a", "--config", str(cfg)], relay_env)
    assert result.returncode == 1 and "memory" in result.stderr


def test_status_before_the_first_run(cfg: Path, relay_env: dict[str, str]) -> None:
    result = run(["status", "--config", str(cfg)], relay_env)
    assert result.returncode == 0 and "has not run" in result.stdout


TWO_SINKS = (SINK, toml.http_sink("http://127.0.0.1:9/", name="bus"))


def table(text: str) -> dict[str, list[str]]:
    """The rows of relay status's table, by sink name."""
    rows = text.split("\n\n", 1)[1].splitlines()[1:]
    return {row.split()[0]: row.split()[1:] for row in rows}


def test_status_lists_the_configured_sinks_before_anything_ran(
    write_config: Callable[..., Path], relay_env: dict[str, str], state_dir: Path
) -> None:
    cfg = str(write_config(*TWO_SINKS))
    text = run(["status", "--config", cfg], relay_env).stdout
    assert table(text) == {
        "bus": ["not", "started", "0", "-", "0", "-"],
        "cloud": ["not", "started", "0", "-", "0", "-"],
    }
    doc = json.loads(run(["status", "--json", "--config", cfg], relay_env).stdout)
    assert [(s["name"], s["depth"], s["delivered"], s["started"]) for s in doc["sinks"]] == [
        ("bus", 0, 0, False),
        ("cloud", 0, 0, False),
    ]
    assert not (state_dir / "spool.db").exists()  # a status is a read


def test_status_after_push_shows_what_each_sink_will_get(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    cfg = str(write_config(*TWO_SINKS))
    for name in ("a", "b"):
        assert run(["push", name, "--config", cfg], relay_env).returncode == 0
    rows = table(run(["status", "--config", cfg], relay_env).stdout)
    assert {name: row[:3] for name, row in rows.items()} == {
        "bus": ["not", "started", "2"],  # the first sinks take what was pushed before
        "cloud": ["not", "started", "2"],
    }
    doc = json.loads(run(["status", "--json", "--config", cfg], relay_env).stdout)
    assert [(s["depth"], s["delivered"], s["started"]) for s in doc["sinks"]] == [(2, 0, False)] * 2


def test_status_shows_a_sink_added_since_the_agent_ran(
    write_config: Callable[..., Path], relay_env: dict[str, str], state_dir: Path
) -> None:
    cfg = str(write_config(*TWO_SINKS))
    with Spool.open(state_dir) as spool:  # the agent ran with "cloud" only
        spool.register_sinks(["cloud"])
    assert run(["push", "a", "--config", cfg], relay_env).returncode == 0
    doc = json.loads(run(["status", "--json", "--config", cfg], relay_env).stdout)
    assert [(s["name"], s["depth"], s["started"]) for s in doc["sinks"]] == [
        ("bus", 0, False),  # it starts after the newest event, when the agent registers it
        ("cloud", 1, True),
    ]


def test_dlq_list_retry_purge(cfg: Path, relay_env: dict[str, str], state_dir: Path) -> None:
    ids = [relay.push(f"e{i}", i, config_path=cfg).id for i in range(3)]
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["cloud"])
        for record in spool.lease("cloud", 3).records:
            spool.dead_letter("cloud", record.seq, f"HTTP 400: bad {record.event.payload}")
    listed = run(["dlq", "list", "--config", str(cfg)], relay_env).stdout.splitlines()
    assert [line.split()[1] for line in listed] == ids
    assert "HTTP 400: bad 0" in listed[0]
    as_json = [
        json.loads(x)
        for x in run(["dlq", "list", "--json", "--config", str(cfg)], relay_env).stdout.splitlines()
    ]
    assert as_json[1]["id"] == ids[1] and json.loads(as_json[1]["event"])["payload"] == 1

    retried = run(["dlq", "retry", ids[1], "--config", str(cfg)], relay_env)
    assert retried.returncode == 0 and "1 dead letter(s) queued again" in retried.stdout
    missing = run(["dlq", "retry", "0" * 32, "--config", str(cfg)], relay_env)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert run(["dlq", "purge", "--config", str(cfg)], relay_env).returncode == 2
    purged = run(["dlq", "purge", "--sink", "cloud", "--config", str(cfg)], relay_env)
    assert "2 dead letter(s) purged" in purged.stdout
    with Spool.open(state_dir) as spool:
        [again] = spool.lease("cloud", 5).records
        assert again.event.id == ids[1]
        assert spool.dead_letters() == []


def test_dlq_says_when_there_is_nothing(
    cfg: Path, relay_env: dict[str, str], state_dir: Path
) -> None:
    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return run(["dlq", *args, "--config", str(cfg)], relay_env)

    def nothing() -> None:
        assert (dlq("list").returncode, dlq("list").stdout) == (0, "no dead letters\n")
        assert dlq("list", "--sink", "cloud").stdout == "no dead letters for sink cloud\n"
        assert dlq("list", "--sink", "@ingest").stdout == "no dead letters for sink @ingest\n"
        assert (dlq("list", "--json").returncode, dlq("list", "--json").stdout) == (0, "")
        unknown = dlq("list", "--sink", "clod")
        assert (unknown.returncode, unknown.stdout) == (2, "")
        assert unknown.stderr == (
            "relay dlq: no sink named 'clod' in the config (sinks: cloud; "
            "input refused at the door: @ingest, @commands)\n"
        )
        assert dlq("purge", "--sink", "clod").returncode == 2

    nothing()  # before anything ran here
    assert not (state_dir / "spool.db").exists()  # and listing made no spool file
    relay.push("x", config_path=cfg)
    nothing()  # with a spool file


def test_dlq_usage_names_what_is_missing(relay_env: dict[str, str]) -> None:
    result = run(["dlq"], relay_env)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "relay dlq: error: the following arguments are required: action"
    )


def test_python_push_works_without_the_agent(cfg: Path, state_dir: Path) -> None:
    event = relay.push("door opened", {"state": "open"}, config_path=cfg)
    with Spool.open(state_dir) as spool:
        spool.register_sinks(["cloud"])
        assert spool.lease("cloud").records[0].event == event


def test_a_missing_config_is_worded_for_the_caller(
    tmp_path: Path, relay_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "none.toml"
    monkeypatch.setenv("RELAY_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        relay.push("door opened")  # from Python the argument is config_path=
    assert info.value.problems == [f"{missing}: no such file (create it, or pass config_path=...)"]
    result = run(["push", "door opened", "--config", str(missing)], relay_env)
    assert (result.returncode, result.stderr) == (
        78,
        f"relay: {missing}: no such file (create it, or pass --config PATH)\n",
    )


def test_doorbell_rings_within_100ms(tmp_path: Path) -> None:
    rung = threading.Event()
    bell = Doorbell(tmp_path, rung.set)
    bell.start()
    try:
        start = time.monotonic()
        ring(tmp_path)
        assert rung.wait(5)
        print(f"doorbell latency {1000 * (time.monotonic() - start):.2f} ms")
    finally:
        bell.close()
    assert not (tmp_path / "wake.sock").exists()
    ring(tmp_path)  # nobody listening: quietly nothing


def test_push_wakes_a_running_agent(cfg: Path) -> None:
    """relay.push from outside the agent reaches the agent's waiters without polling."""
    agent = Agent(load(cfg))
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,))
    runner.start()
    try:
        wait_until(
            lambda: agent.spool is not None and (cfg.parent / "state" / "wake.sock").exists(),
            10,
            "the agent's spool and doorbell",
        )
        spool = agent.spool
        version = spool.version
        woke: list[float] = []
        waiter = threading.Thread(
            target=lambda: (spool.wait_for_change(version, 10), woke.append(time.monotonic()))
        )
        waiter.start()
        subprocess.run([*RELAY, "push", "x", "--config", str(cfg)], check=True, timeout=30)
        returned = time.monotonic()
        waiter.join(10)
        assert woke, "the agent was not woken"
        assert woke[0] - returned < 1.0  # generous for CI; the figure is printed
        print(f"woken {1000 * (woke[0] - returned):.1f} ms after relay push returned")
        assert spool.lease("cloud").records[0].event.name == "x"
    finally:
        stop.set()
        runner.join(10)


def test_second_agent_on_the_same_state_dir_is_refused(
    cfg: Path, relay_env: dict[str, str]
) -> None:
    agent = Agent(load(cfg))
    agent.start()
    try:
        result = run(["run", "--config", str(cfg)], relay_env)
        assert result.returncode == 1
        assert "another relay (pid" in result.stderr
    finally:
        agent.stop()


def test_run_stops_cleanly_on_sigterm(cfg: Path, relay_env: dict[str, str]) -> None:
    import signal

    with subprocess.Popen(
        [*RELAY, "run", "--config", str(cfg)], stderr=subprocess.PIPE, text=True, env=relay_env
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "relay started" in line:
                proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_demo_delivers_everything(relay_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*RELAY, "demo", "--events", "6", "--fail-rate", "0.5"],
        capture_output=True,
        text=True,
        env=relay_env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "produced 6, delivered 6," in result.stdout
    assert "duplicates seen by the remote 0" in result.stdout
    assert result.stdout.count("  pushed ") == 6
