"""Issue 6/9: ``relay run`` refuses a config that others may read while it holds a secret
inline, or that others may change (exit 78, as sshd refuses its keys). These are stat() mode
bits, which mean the same under root (unlike access() checks)."""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from relay import config

SECRET = "hunter2-do-not-print"
EXAMPLE = Path(__file__).parent.parent / "etc" / "relay.toml"


def names(path: Path) -> tuple[str, str]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def test_world_readable_inline_password_is_one_problem(write_config: Callable[..., Path]) -> None:
    path = write_config(f'[mqtt]\nusername = "relay"\npassword = "{SECRET}"\n')
    path.chmod(0o644)
    owner, group = names(path)
    [line] = config.permission_problems(path)
    assert line.startswith(f"{path}: mode 0644 (owner {owner}, group {group}) ")
    assert "mqtt.password" in line
    assert "chmod 0640 and chown root:relay, or use password_file" in line
    assert SECRET not in line


def test_group_readable_is_how_the_service_reads_it(write_config: Callable[..., Path]) -> None:
    path = write_config(f'[mqtt]\npassword = "{SECRET}"\n')
    path.chmod(0o640)
    assert config.permission_problems(path) == []


def test_a_secret_from_a_file_is_not_inline(
    write_config: Callable[..., Path], secret_file: Path
) -> None:
    path = write_config(
        f'[mqtt]\nusername = "relay"\npassword_file = "{secret_file}"\n'
        f'[[sinks]]\nname = "c"\ntype = "http"\nurl = "https://x/"\ntoken_file = "{secret_file}"\n'
        f'[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "amqp://relay@h/"\nqueue = "q"\n'
        f'password_file = "{secret_file}"\n'
    )
    path.chmod(0o644)
    assert config.load(path).mqtt.password is not None  # the secrets are there, from files
    assert config.permission_problems(path) == []


@pytest.mark.parametrize(
    ("body", "keys"),
    [
        (f'[[sinks]]\nname = "c"\ntype = "http"\nurl = "https://x/"\ntoken = "{SECRET}"\n',
         "sinks[0].token"),
        (f'[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "amqp://u:{SECRET}@h/"\nqueue = "q"\n',
         "sinks[0].url"),
        (f'[commands]\namqp_url = "amqp://u:{SECRET}@h/"\namqp_queue = "q"\n',
         "commands.amqp_url"),
        (f'[[devices]]\nname = "d"\ntype = "http"\nurl = "http://x/"\n'
         f'headers = {{ Authorization = "Bearer {SECRET}" }}\n',
         "devices[0].headers.Authorization"),
        (f'[mqtt]\npassword = "{SECRET}"\n'
         f'[[sinks]]\nname = "c"\ntype = "http"\nurl = "https://x/"\ntoken = "{SECRET}"\n',
         "the secrets in mqtt.password, sinks[0].token:"),
    ],
)  # fmt: skip
def test_every_kind_of_inline_secret_is_named(
    write_config: Callable[..., Path], body: str, keys: str
) -> None:
    path = write_config(body)
    path.chmod(0o604)
    config.load(path)  # a valid config: only the mode is wrong
    [line] = config.permission_problems(path)
    assert keys in line
    assert SECRET not in line


def test_a_user_name_without_password_is_no_secret(write_config: Callable[..., Path]) -> None:
    path = write_config('[[sinks]]\nname = "b"\ntype = "amqp"\nurl = "amqp://u@h/"\nqueue = "q"\n')
    path.chmod(0o644)
    assert config.permission_problems(path) == []


@pytest.mark.parametrize(("mode", "who"), [(0o646, "every user"), (0o666, "every user")])
def test_world_writable_is_a_problem_even_without_secrets(
    write_config: Callable[..., Path], mode: int, who: str
) -> None:
    # Whoever can write it decides where events go and what device commands do.
    path = write_config()
    path.chmod(mode)
    owner, group = names(path)
    [line] = config.permission_problems(path)
    assert line.startswith(f"{path}: mode {mode:04o} (owner {owner}, group {group}) lets {who}")
    assert line.endswith("chmod 0640 and chown root:relay")


def test_group_writable_names_the_group(write_config: Callable[..., Path]) -> None:
    path = write_config()
    path.chmod(0o660)
    _, group = names(path)
    [line] = config.permission_problems(path)
    assert f"lets group {group} change it" in line


def test_open_to_everyone_with_a_secret_is_two_problems(
    write_config: Callable[..., Path],
) -> None:
    path = write_config(f'[mqtt]\npassword = "{SECRET}"\n')
    path.chmod(0o666)
    read, write = config.permission_problems(path)
    assert "read the secret in mqtt.password" in read
    assert "lets every user change it" in write


def test_the_example_as_installed_is_accepted(tmp_path: Path) -> None:
    # It holds amqp://guest:guest@...: fine at the installer's 0640, refused at 0644.
    path = tmp_path / "relay.toml"
    path.write_bytes(EXAMPLE.read_bytes())
    path.chmod(0o640)
    assert config.permission_problems(path) == []
    path.chmod(0o644)
    [line] = config.permission_problems(path)
    assert "sinks[1].url" in line


def test_load_does_not_check_the_mode(write_config: Callable[..., Path]) -> None:
    # check-config and push must still work on an example a person is reading.
    path = write_config(f'[mqtt]\npassword = "{SECRET}"\n')
    path.chmod(0o666)
    assert config.load(path).mqtt.password is not None


def test_a_file_load_refuses_gives_no_line(tmp_path: Path) -> None:
    assert config.permission_problems(tmp_path / "missing.toml") == []
    bad = tmp_path / "bad.toml"
    bad.write_text("x = [\n")
    bad.chmod(0o666)
    assert config.permission_problems(bad) == []
