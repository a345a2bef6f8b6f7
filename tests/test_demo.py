"""``relay demo``, run as a person runs it: the live view's spool depth, Ctrl-C, and a plain
``pip install`` without gpiozero."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

from tests.helpers.common import RELAY

LINE = re.compile(r"^  (pushed|refused|delivered) +#(\d+) .* spool depth (\d+)$")

# The demo with gpiozero unimportable, as after `pip install relay` without the gpio extra.
WITHOUT_GPIOZERO = [
    sys.executable,
    "-c",
    "import sys; sys.modules['gpiozero'] = None; "
    "from relay.cli import main; sys.exit(main(sys.argv[1:]))",
]


def demo(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*argv, "demo", "--events", "6"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def view(stdout: str) -> list[tuple[str, int, int]]:
    """(what, event number, depth) of each line of the live view."""
    return [(m[1], int(m[2]), int(m[3])) for m in map(LINE.match, stdout.splitlines()) if m]


def check_depths(lines: list[tuple[str, int, int]]) -> None:
    """The depth of each line is the queue at that moment: a "pushed" line counts its own
    event, the last "delivered" line shows an empty spool, and every line is within one of
    the events pushed minus those delivered so far (an ack, or the next event stored, may
    come between the figure and its line)."""
    pushed = delivered = 0
    for what, number, depth in lines:
        pushed += what == "pushed"
        delivered += what == "delivered"
        assert abs(depth - (pushed - delivered)) <= 1, (what, number, depth, lines)
        if what == "pushed":
            assert depth >= 1, (number, lines)
    last = [line for line in lines if line[0] == "delivered"][-1]
    assert last[2] == 0, lines


def test_the_live_view_shows_the_depth_of_the_moment(relay_env: dict[str, str]) -> None:
    done = demo(RELAY, relay_env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = view(done.stdout)
    assert [n for what, n, _ in lines if what == "pushed"] == [1, 2, 3, 4, 5, 6]
    assert [n for what, n, _ in lines if what == "delivered"] == [1, 2, 3, 4, 5, 6]
    check_depths(lines)


def test_without_gpiozero_the_door_is_a_local_producer(relay_env: dict[str, str]) -> None:
    done = demo(WITHOUT_GPIOZERO, relay_env)
    assert done.returncode == 0, done.stdout + done.stderr
    [note] = [line for line in done.stdout.splitlines() if "gpiozero" in line]
    assert "local producer" in note
    assert "produced 6, delivered 6," in done.stdout
    check_depths(view(done.stdout))


def test_ctrl_c_ends_the_demo_with_status_0(relay_env: dict[str, str]) -> None:
    with subprocess.Popen(
        [*RELAY, "demo", "--events", "1000"], stdout=subprocess.PIPE, text=True, env=relay_env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("  pushed "):
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(30) == 0
    assert "stopped" in rest and "produced " in rest


def test_demo_refuses_a_config(relay_env: dict[str, str]) -> None:
    for argv in (["demo", "--config", "x.toml"], ["--config", "x.toml", "demo"]):
        done = subprocess.run(
            [*RELAY, *argv], capture_output=True, text=True, env=relay_env, check=False
        )
        assert done.returncode == 2
        assert done.stderr.startswith("relay demo: --config is not used: ")
        assert done.stderr.count("\n") == 1
