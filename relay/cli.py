"""The ``relay`` command: parses arguments, calls the package, maps errors to exit codes.

Exit status: 0 success, 1 runtime failure, 2 usage error, 78 bad config (EX_CONFIG, which
the systemd unit's ``RestartPreventExitStatus=`` honours so a typo does not restart-loop).

Each command imports what it needs when it runs: ``relay push`` from a script on a Pi Zero
pays for every module imported here, and the config alone (pydantic) is most of its time
(tests/bench/cli_bench.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay import __version__
from relay.errors import ConfigError, RelayError

if TYPE_CHECKING:
    from relay.config import Settings

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78

log = logging.getLogger("relay")


class UsageError(Exception):
    """A bad argument the parser could not see (say, ``--payload`` that is not JSON)."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for line in exc.problems:
            print(f"relay: {line}", file=sys.stderr)
        return EX_CONFIG
    except UsageError as exc:
        print(f"relay {args.command}: {exc}", file=sys.stderr)
        return EX_USAGE
    except RelayError as exc:
        print(f"relay {args.command}: {exc}", file=sys.stderr)
        return EX_FAIL
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    config_help = "config file (default: $RELAY_CONFIG, else /etc/relay.toml)"
    # Accepted before or after the subcommand; SUPPRESS keeps the later one from erasing
    # the earlier with its default.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    p = argparse.ArgumentParser(prog="relay", description="Home-automation event relay agent.")
    p.add_argument("--config", metavar="PATH", help=config_help)
    p.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        cmd = sub.add_parser(name, parents=[common], help=help, description=help)
        cmd.set_defaults(func=func)
        return cmd

    add("run", _run, "run the agent (what systemd runs)")
    demo = add("demo", _demo, "a self-contained demo: door sensor, flaky remote, live view")
    demo.add_argument("--events", type=int, default=10, metavar="N", help="stop after N events")
    demo.add_argument(
        "--fail-rate",
        type=float,
        default=0.5,
        metavar="P",
        help="share of requests the remote refuses (default 0.5)",
    )
    push = add("push", _push, "put an event in the spool (works with the agent stopped)")
    push.add_argument("name", help="event name, e.g. 'door opened' or home/hall/door")
    push.add_argument("--payload", metavar="JSON", help="event payload, as JSON")
    cmd = add("command", _command, "queue a device command (run by the agent, one at a time)")
    cmd.add_argument("device", help="a device name from the config")
    cmd.add_argument("action", help="an action the device allows, e.g. on, off, pulse")
    cmd.add_argument("--id", help="command id (default: a new one); an id seen before is not run")
    cmd.add_argument("--args", metavar="JSON", help="action arguments, e.g. '{\"ms\": 500}'")
    cmd.add_argument("--wait", action="store_true", help="wait for the outcome; exit 1 unless ok")
    status = add("status", _status, "queue depth, ages, errors and dead letters per sink")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    dlq = add("dlq", _dlq, "list, retry or purge dead letters")
    dlq.add_argument("action", choices=["list", "retry", "purge"], help="what to do")
    # default=[]: argparse takes a "*" positional without a default for a required one, and
    # "relay dlq" alone said "the following arguments are required: action, ID".
    dlq.add_argument("ids", nargs="*", default=[], metavar="ID", help="event ids (default: all)")
    dlq.add_argument("--sink", metavar="NAME", help="only this sink's dead letters")
    dlq.add_argument("--all", action="store_true", help="purge: confirm purging everything")
    dlq.add_argument("--json", action="store_true", help="list: one JSON object per line")
    add("check-config", _check_config, "validate and print the effective config")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    from relay import config

    return config.load(config.config_path(args.config))


def _run(args: argparse.Namespace) -> int:
    from relay import config
    from relay.signals import SignalListener
    from relay.systemd import setup_logging

    path = config.config_path(args.config)
    settings = config.load(path)
    if problems := config.permission_problems(path):  # as sshd refuses a readable key
        raise ConfigError(problems)
    setup_logging(settings.log_level)
    stop, reload = threading.Event(), threading.Event()

    def on_reload() -> None:
        reload.set()
        stop.set()

    # Signal handlers only set flags; the main thread does the work (relay/signals.py).
    listener = SignalListener(on_stop=stop.set, on_reload=on_reload)
    listener.start()
    try:
        return _serve(settings, path, stop, reload)
    finally:
        listener.close()


def _serve(settings: Settings, path: Path, stop: threading.Event, reload: threading.Event) -> int:
    """Run agents until a stop that is not a reload; the exit status."""
    from relay.agent import Agent
    from relay.systemd import Notifier, setup_logging

    notifier = Notifier()
    while True:
        try:
            Agent(settings).run(stop, notifier, reload)
        except ConfigError as exc:  # found only while building (a TLS file pika cannot load)
            for line in exc.problems:
                log.critical("%s: %s", path, line)
            return EX_CONFIG
        except RelayError as exc:
            log.critical("%s", exc)
            return EX_FAIL
        if not reload.is_set():
            return EX_OK
        settings = _reloaded(path, settings)
        setup_logging(settings.log_level)
        reload.clear()
        stop.clear()


def _reloaded(path: Path, current: Settings) -> Settings:
    """The config at ``path`` after SIGHUP; a bad one is reported and the current one kept,
    so a typo in an edit does not take relay down."""
    from relay import config

    try:
        settings = config.load(path)
        if problems := config.permission_problems(path):
            raise ConfigError(problems)
        return settings
    except ConfigError as exc:
        for line in exc.problems:
            log.error("%s", line)
        log.error("config not reloaded: keeping the one relay was running with")
        return current


def _demo(args: argparse.Namespace) -> int:
    from relay import demo
    from relay.signals import SignalListener
    from relay.systemd import setup_logging

    if args.config is not None:
        raise UsageError(
            "--config is not used: the demo makes its own config and spool in a temporary "
            "directory (relay --config PATH run runs yours)"
        )
    if args.events < 1 or not 0 <= args.fail_rate < 1:
        raise UsageError("--events must be at least 1 and --fail-rate in [0, 1)")
    setup_logging("warning")
    stop = threading.Event()
    # Ctrl-C ends the demo as the person asked: a summary and exit status 0 (signal
    # handlers only set a flag: relay/signals.py).
    listener = SignalListener(on_stop=stop.set, on_reload=lambda: None)
    listener.start()
    try:
        tally = demo.run(events=args.events, fail_rate=args.fail_rate, stop=stop)
    finally:
        listener.close()
    return EX_OK if not tally.finished or tally.delivered == tally.produced else EX_FAIL


def _push(args: argparse.Namespace) -> int:
    from relay.producer import push

    payload = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nesting
            raise UsageError(f"--payload is not valid JSON ({exc})") from None
    try:
        event = push(args.name, payload, config_path=args.config)
    except (ValueError, RecursionError) as exc:  # RecursionError: a payload json cannot encode
        raise UsageError(str(exc)) from None
    print(event.id)
    return EX_OK


def _command(args: argparse.Namespace) -> int:
    from relay.producer import command, command_state, wait_for_outcome

    cmd_args = None
    if args.args is not None:
        try:
            cmd_args = json.loads(args.args)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nesting
            raise UsageError(f"--args is not valid JSON ({exc})") from None
    try:
        cmd, new = command(
            args.device, args.action, cmd_args, command_id=args.id, config_path=args.config
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(cmd.id)
    if new and not args.wait:
        return EX_OK
    settings = _settings(args)
    if not new:
        # A script sending the same id again (a retry) did its job: say what became of it.
        state = command_state(settings, cmd.id)
        print(f"relay command: {_seen(cmd.id, state)}: not queued again", file=sys.stderr)
        if state is not None and state[0] == "done":
            return _outcome(state[1] or "failed", state[2]) if args.wait else EX_OK
        if not args.wait:
            return EX_OK
    limit = settings.commands.ttl_s + settings.commands.timeout_s + 5
    outcome = wait_for_outcome(settings, cmd.id, limit)  # NotRunning: no agent to run it
    if outcome is None:
        print(f"relay command: no outcome within {limit:g}s", file=sys.stderr)
        return EX_FAIL
    return _outcome(*outcome)


def _seen(command_id: str, state: tuple[str, str | None, str | None] | None) -> str:
    if state is None:
        return f"command {command_id} was seen before"
    what, status, error = state
    if what != "done":
        return f"command {command_id} is {what} already"
    return f"command {command_id} ran already: {status or 'failed'}" + (f": {error}" * bool(error))


def _outcome(status: str, error: str | None) -> int:
    """Print the outcome; the exit status of --wait."""
    print(status + (f": {error}" if error else ""))
    return EX_OK if status == "ok" else EX_FAIL


def _status(args: argparse.Namespace) -> int:
    import shutil  # it imports zlib, bz2 and lzma: only for the one command that needs it

    from relay import report, status

    settings = _settings(args)
    found = status.gather(settings)
    broker = f"{settings.mqtt.host}:{settings.mqtt.port}"
    if args.json:
        doc = report.status_json(found.stats, broker=broker, not_started=found.not_started)
        print(json.dumps(doc, indent=2))
    else:
        # As wide as the terminal, for longer errors; 80 columns when piped.
        width = max(report.WIDTH, shutil.get_terminal_size().columns)
        text = report.status_text(
            found.stats,
            width=width,
            broker=broker,
            not_started=found.not_started,
            no_file=not found.exists,
        )
        print(text)
    return EX_OK


def _dlq(args: argparse.Namespace) -> int:
    from relay import dlq, report

    settings = _settings(args)
    if args.action == "purge" and not (args.ids or args.sink or args.all):
        raise UsageError("name the IDs or --sink to purge, or pass --all")
    try:
        if args.action == "list":
            found = dlq.dead_letters(settings, args.sink, args.ids)
        else:
            act = dlq.redeliver if args.action == "retry" else dlq.purge
            n = act(settings, args.sink, args.ids)
    except ValueError as exc:  # a --sink that names nothing
        raise UsageError(str(exc)) from None
    if args.action == "list":
        for dl in found:
            print(
                json.dumps(report.dead_letter_json(dl))
                if args.json
                else report.dead_letter_text(dl)
            )
        if not found and not args.json:  # JSON lines: none is no line
            sink, ids = (
                f" for sink {args.sink}" * bool(args.sink),
                " with those ids" * bool(args.ids),
            )
            print(f"no dead letters{sink}{ids}")
        return EX_OK
    print(f"{n} dead letter(s) " + ("queued again" if args.action == "retry" else "purged"))
    if args.ids and n < len(args.ids):
        print(f"relay dlq: {len(args.ids) - n} id(s) not found", file=sys.stderr)
        return EX_FAIL
    return EX_OK


def _check_config(args: argparse.Namespace) -> int:
    from relay import config

    path = config.config_path(args.config)
    settings = config.load(path)
    print(json.dumps(config.dump(settings), indent=2))
    broker = settings.mqtt.broker_config
    if settings.uses_mqtt() and settings.mqtt.local and broker is not None and broker.exists():
        from relay.mqtt import mosquitto

        for line in mosquitto.problems(broker):
            print(f"relay: warning: {line}", file=sys.stderr)
    print(f"relay: {Path(path)}: config OK", file=sys.stderr)
    return EX_OK
