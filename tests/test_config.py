"""P8 for config: every problem is one line naming the file and key, no secret is echoed,
and the exit status is 78 before anything starts."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from relay import config
from relay.errors import ConfigError
from tests.helpers.common import RELAY

EXAMPLE = Path(__file__).parent.parent / "etc" / "relay.toml"
SECRET = "hunter2-do-not-print"
# Keys the example sets to show their use, not their default.
EXAMPLE_VALUES = {"queue", "on_active", "on_inactive"}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(path)
    return info.value.problems


# ------------------------------------------------------------------ the example


def test_example_loads() -> None:
    settings = config.load(EXAMPLE)
    assert settings.node == "hall-pi"
    assert [s.name for s in settings.sinks] == ["cloud", "bus"]


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields) - {"type"}


@pytest.mark.parametrize(
    ("table", "model"),
    [
        ("spool", config.SpoolConfig),
        ("mqtt", config.MqttConfig),
        ("commands", config.CommandsConfig),
        ("sources", config.MqttSourceConfig),
        ("sources", config.GpioSourceConfig),
        ("gpio", config.GpioConfig),
        ("homeassistant", config.HomeAssistantConfig),
        ("devices", config.GpioDeviceConfig),
        ("sinks", config.HttpSinkConfig),
        ("sinks", config.AmqpSinkConfig),
        ("sinks", config.RedisSinkConfig),  # commented out in the example: keys only
        ("devices", config.MqttDeviceConfig),
        ("devices", config.HttpDeviceConfig),
    ],
)
def test_example_documents_every_key_with_its_default(table: str, model: type[BaseModel]) -> None:
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    # Every key appears, set or commented out.
    shown = set(re.findall(r"^#? ?(\w+) *=", text, re.M))
    assert _fields(model) <= shown, f"not in the example: {_fields(model) - shown}"
    # Where the example sets a key that has a default, it shows that default.
    items = data[table] if isinstance(data[table], list) else [data[table]]
    tag = (
        model.model_fields["type"].annotation.__args__[0] if "type" in model.model_fields else None
    )  # type: ignore[union-attr]
    for item in items:
        if tag is not None and item.get("type") != tag:
            continue
        loaded = model.model_validate(item)
        for key, value in item.items():
            field = model.model_fields[key]
            if field.is_required() or key in EXAMPLE_VALUES:
                continue
            if key.endswith("_file") or key in {"ca_file", "cert_file", "key_file"}:
                assert value == "", f"{table}.{key}: the example should leave files unset"
                continue
            assert getattr(loaded, key) == field.get_default(call_default_factory=True), (
                f"{table}.{key} = {value!r} in the example is not the default"
            )


def test_example_top_level_keys_are_defaults_or_documented() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert data["state_dir"] == str(config.Settings.model_fields["state_dir"].default)
    assert data["log_level"] == config.Settings.model_fields["log_level"].default


# ------------------------------------------------------------------ one line per problem


def test_wrong_type_names_the_key(write_config: Callable[..., Path]) -> None:
    path = write_config('[mqtt]\nport = "eighty"\n')
    [line] = problems(path)
    assert line.startswith(f"{path}: mqtt.port: ")


def test_unknown_key_names_the_key(write_config: Callable[..., Path]) -> None:
    path = write_config('[[sinks]]\nname = "a"\ntype = "http"\nurl = "http://x/"\nurll = 1\n')
    assert problems(path) == [
        f"{path}: sinks[0].urll: unknown key (check its spelling and its table)"
    ]


@pytest.mark.parametrize("value", [0, 65])
def test_max_in_flight_is_1_to_64(write_config: Callable[..., Path], value: int) -> None:
    sink = '[[sinks]]\nname = "a"\ntype = "http"\nurl = "http://x/"\n'
    path = write_config(f"{sink}max_in_flight = {value}\n")
    [line] = problems(path)
    assert line.startswith(f"{path}: sinks[0].max_in_flight: ")
    path = write_config(f"{sink}max_in_flight = 64\n", name="ok.toml")
    assert config.load(path).sinks[0].in_flight == 64


def test_only_the_http_sink_has_max_in_flight(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[[sinks]]\nname = "r"\ntype = "redis"\nurl = "redis://x/"\nstream = "s"\n'
        "max_in_flight = 4\n"
    )
    assert problems(path) == [
        f"{path}: sinks[0].max_in_flight: unknown key (check its spelling and its table)"
    ]


def test_every_problem_is_reported_at_once(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[spool]\nwhen_full = "sometimes"\n[mqtt]\nport = 70000\n'
        '[[sinks]]\nname = "a"\ntype = "http"\nurl = "ftp://x/"\n'
    )
    lines = problems(path)
    assert [line.split(": ")[1] for line in lines] == [
        "spool.when_full",
        "mqtt.port",
        "sinks[0].url",
    ]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert problems(path) == [f"{path}: no such file (create it, or pass --config PATH)"]


def test_toml_syntax_error_gives_line(write_config: Callable[..., Path]) -> None:
    path = write_config("[spool\nmax_size = 1\n")
    [line] = problems(path)
    assert line.startswith(f"{path}: not valid TOML: ") and "line 3" in line


def test_duplicate_sink_names(write_config: Callable[..., Path]) -> None:
    sink = '[[sinks]]\nname = "a"\ntype = "http"\nurl = "http://x/"\n'
    [line] = problems(write_config(sink + sink))
    assert "the name 'a' is used twice" in line


def test_amqp_sink_needs_a_destination(write_config: Callable[..., Path]) -> None:
    path = write_config('[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "amqp://localhost/"\n')
    [line] = problems(path)
    assert line.startswith(f"{path}: sinks[0]: ") and "queue" in line


def test_sizes_and_durations(write_config: Callable[..., Path]) -> None:
    path = write_config(
        '[spool]\nmax_size = "2MiB"\n'
        '[[sinks]]\nname = "a"\ntype = "http"\nurl = "http://x/"\nmax_age = "7d"\n'
        'retry_initial = "250ms"\nretry_max = 90\n'
    )
    s = config.load(path)
    assert s.spool.max_size == 2 * 1024 * 1024
    sink = s.sinks[0]
    assert sink.max_age == timedelta(days=7)
    assert sink.retry_initial == timedelta(milliseconds=250)
    assert sink.retry_max == timedelta(seconds=90)
    [line] = problems(write_config('[spool]\nmax_size = "lots"\n'))
    assert "spool.max_size" in line


# ------------------------------------------------------------------ secrets


def test_secret_from_file(write_config: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n")
    s = config.load(write_config(f'[mqtt]\npassword_file = "{tmp_path / "pw"}"\n'))
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(config.dump(s))


def test_relative_secret_file_comes_from_credentials_directory(
    write_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cloud.token").write_text(SECRET)
    path = write_config(
        '[[sinks]]\nname = "a"\ntype = "http"\nurl = "http://x/"\ntoken_file = "cloud.token"\n'
    )
    [line] = problems(path)
    assert "is relative" in line and "LoadCredential" in line
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    sink = config.load(path).sinks[0]
    assert isinstance(sink, config.HttpSinkConfig) and sink.token is not None
    assert sink.token.get_secret_value() == SECRET


def test_unreadable_secret_file(write_config: Callable[..., Path], tmp_path: Path) -> None:
    [line] = problems(write_config(f'[mqtt]\npassword_file = "{tmp_path / "none"}"\n'))
    assert line.startswith(f"{write_config()}: mqtt: cannot read password_file")
    assert "No such file" in line


# ------------------------------------------------------------------ environment


def test_environment_overrides_the_file(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config('log_level = "info"\n[spool]\nmax_size = "1MB"\n')
    monkeypatch.setenv("RELAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("RELAY_SPOOL__WHEN_FULL", "drop_oldest")
    s = config.load(path)
    assert (s.log_level, s.spool.when_full, s.spool.max_size) == ("debug", "drop_oldest", 10**6)


def test_bad_environment_value_is_reported(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_SPOOL__WHEN_FULL", "never")
    [line] = problems(write_config())
    assert "spool.when_full" in line


def test_environment_merges_into_a_table_and_replaces_a_list(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        '[spool]\nmax_size = "1MB"\n',
        '[[sinks]]\nname = "a"\ntype = "http"\nurl = "http://127.0.0.1:9/"\n',
        '[[sinks]]\nname = "b"\ntype = "http"\nurl = "http://127.0.0.1:9/"\n',
    )
    monkeypatch.setenv("relay_spool__when_full", "drop_oldest")  # names in any case
    monkeypatch.setenv("RELAY_SINKS", '[{"name": "c", "type": "http", "url": "http://h/"}]')
    s = config.load(path)
    assert (s.spool.max_size, s.spool.when_full) == (10**6, "drop_oldest")
    assert [sink.name for sink in s.sinks] == ["c"]


def test_environment_keys_are_checked_as_the_file_is(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_SPOOL__MAX_SIZ", "1MB")
    [line] = problems(write_config())
    assert (
        line == f"{write_config()}: spool.max_siz: unknown key (check its spelling and its table)"
    )
    monkeypatch.delenv("RELAY_SPOOL__MAX_SIZ")
    monkeypatch.setenv("RELAY_SINKS", "[{nope")
    [line] = problems(write_config())
    assert line.startswith(f"{write_config()}: environment override: ") and "sinks" in line


def test_settings_made_in_code_take_nothing_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_NODE", "from-env")
    assert config.Settings(node="given").node == "given"
    assert config.Settings().node != "from-env"


def test_config_path_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_CONFIG", raising=False)
    assert config.config_path(None) == Path("/etc/relay.toml")
    monkeypatch.setenv("RELAY_CONFIG", "/srv/r.toml")
    assert config.config_path(None) == Path("/srv/r.toml")
    assert config.config_path("/x.toml") == Path("/x.toml")


# ------------------------------------------------------------------ through the CLI


@pytest.mark.parametrize(
    "body",
    [
        f'[mqtt]\npassword = "{SECRET}"\nport = "not a port"\n',
        f'[mqtt]\npassword = {{ nested = "{SECRET}" }}\n',
        f'[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "http://guest:{SECRET}@host/"\nqueue = "q"\n',
        f'[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "amqp://guest:{SECRET}@host:99999/"\nqueue = "q"\n',
        f'[[sinks]]\nname = "c"\ntype = "http"\nurl = "http://x/"\ntoken = "{SECRET}"\ntimeout_s = -1\n',
        f'[[sinks]]\nname = "c"\ntype = "http"\nurl = "http://x/"\ntoken = ["{SECRET}"]\n',
        f'[spool]\nmax_size = "{SECRET}"\n',
    ],
)
@pytest.mark.parametrize("command", ["run", "check-config", "push", "status"])
def test_bad_config_exits_78_without_echoing_secrets(
    body: str, command: str, write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    path = write_config(body)
    args = [command, "--config", str(path)] + (["door"] if command == "push" else [])
    result = run(args, relay_env)
    assert result.returncode == 78, result.stderr
    assert SECRET not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith(f"relay: {path}: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr


def test_missing_and_unreadable_config_exit_78(tmp_path: Path, relay_env: dict[str, str]) -> None:
    result = run(["run", "--config", str(tmp_path / "missing.toml")], relay_env)
    assert result.returncode == 78
    assert (
        result.stderr
        == f"relay: {tmp_path / 'missing.toml'}: no such file (create it, or pass --config PATH)\n"
    )
    result = run(["run", "--config", str(tmp_path)], relay_env)  # a directory
    assert result.returncode == 78
    assert result.stderr.startswith(f"relay: {tmp_path}: cannot read: ")


def test_check_config_prints_the_effective_config_masked(
    write_config: Callable[..., Path], relay_env: dict[str, str]
) -> None:
    path = write_config(
        f'[mqtt]\npassword = "{SECRET}"\n'
        f'[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "amqp://guest:{SECRET}@host/"\nqueue = "q"\n'
    )
    result = run(["check-config", "--config", str(path)], relay_env)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    assert '"url": "amqp://guest:***@host/"' in result.stdout
    assert '"password": "**********"' in result.stdout
    assert "config OK" in result.stderr
