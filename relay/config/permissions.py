"""Whether the config file's mode bits let other users read its secrets or change it.

``relay run`` refuses to start (exit 78) on any line :func:`permission_problems` returns, as
sshd refuses a private key that others can read. ``load()`` does not ask, so that
``check-config`` and ``push`` still work for a person reading an example. The rule:

- **writable by group or others** (``mode & 0o022``): always a problem, secret or not:
  whoever can write the file decides where events go and what device commands do (sshd's
  StrictModes refuses group- or world-writable files for the same reason);
- **readable by others** (``mode & 0o004``): a problem when the file holds a secret inline;
- **readable by its group** (``0o040``): allowed. The installer makes the file 0640
  root:relay so that the service's own group reads it; who is in a group is the
  administrator's choice, which relay cannot judge.

Only ``stat()`` mode bits count, never ``access()``: they mean the same when relay runs as
root, and they are what ``ls -l`` shows the person who has to fix them. The file's
directory is not checked.

A secret is *inline* when its text is in the file: ``mqtt.password``, a ``token``, a password
in any URL (``sinks[].url``, ``devices[].url``, ``commands.amqp_url``) or an
``Authorization`` header. A secret from a ``*_file`` (or ``$CREDENTIALS_DIRECTORY``) or from
the environment is not in the file; a password left in an amqp url beside its
``password_file`` is, even though ``password_file`` replaces it.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_AUTH_HEADERS = {"authorization", "proxy-authorization"}
_FIX_MODE = "chmod 0640 and chown root:relay"
_FIX_SECRET = f"{_FIX_MODE}, or use password_file / token_file / LoadCredential="


def permission_problems(path: Path) -> list[str]:
    """One line per way the file at ``path`` is open to other users (see the module doc):
    naming the file, its mode in octal, owner and group, the inline secret keys (never their
    values) and what to do. ``[]`` when it is safe.

    Call it after :func:`relay.config.load` accepted ``path``: a file that cannot be read or
    parsed gives no line here, since ``load()`` has reported it already.
    """
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())  # the file read below, even if path is replaced meanwhile
            data = tomllib.load(f)
    except (OSError, ValueError):  # ValueError: not TOML, or not UTF-8
        return []
    mode = stat.S_IMODE(st.st_mode)
    group = _group_name(st.st_gid)
    where = f"{path}: mode {mode:04o} (owner {_user_name(st.st_uid)}, group {group})"
    lines = []
    secrets = inline_secrets(data)
    if mode & 0o004 and secrets:
        what = "the secret in" if len(secrets) == 1 else "the secrets in"
        lines.append(f"{where} lets every user read {what} {', '.join(secrets)}: {_FIX_SECRET}")
    if mode & 0o022:
        writers = "every user" if mode & 0o002 else f"group {group}"
        lines.append(
            f"{where} lets {writers} change it, and so where events go and what commands do: "
            f"{_FIX_MODE}"
        )
    return lines


def inline_secrets(data: dict[str, Any]) -> list[str]:
    """The keys of ``data`` (a parsed config file) whose values are, or hold, a secret."""
    found = []
    if _table(data.get("mqtt")).get("password"):
        found.append("mqtt.password")
    for kind in ("sinks", "devices"):
        items = data.get(kind)
        for i, item in enumerate(items if isinstance(items, list) else []):
            found += [f"{kind}[{i}].{key}" for key in _item_secrets(_table(item))]
    if _has_password(_table(data.get("commands")).get("amqp_url")):
        found.append("commands.amqp_url")
    return found


def _item_secrets(item: dict[str, Any]) -> list[str]:
    keys = [key for key in ("password", "token") if item.get(key)]
    if _has_password(item.get("url")):
        keys.append("url")
    headers = _table(item.get("headers"))
    keys += [f"headers.{k}" for k, v in headers.items() if k.lower() in _AUTH_HEADERS and v]
    return keys


def _table(value: Any) -> dict[str, Any]:
    # load() has already refused a file of the wrong shape; this only keeps the walk safe.
    return value if isinstance(value, dict) else {}


def _has_password(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        return bool(urlsplit(url).password)
    except ValueError:  # an unbalanced "[" in the host: load() reports the URL itself
        return False


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no such user in /etc/passwd (a container, a restored backup)
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
