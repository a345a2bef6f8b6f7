"""Secrets read from files: every secret key (``password``, ``token``) has a ``*_file`` twin.

A relative ``*_file`` names a file in ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``).
Validation errors name the key and the path, never the file's content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr


def with_secret(data: Any, file_key: str, key: str) -> Any:
    """Before validation: put the content of ``file_key``'s file under ``key``."""
    if isinstance(data, dict) and data.get(file_key):
        data = {**data, key: read_secret(Path(data[file_key]), file_key)}
    return data


def read_secret(path: Path, key: str) -> str:
    """The text of the secret file ``path`` (given as ``key``); ValueError if unreadable."""
    if not path.is_absolute():
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ValueError(
                f"{key} {str(path)!r} is relative: give an absolute path, or run under systemd "
                "with LoadCredential= so that $CREDENTIALS_DIRECTORY is set"
            )
        path = Path(creds) / path
    try:
        # A trailing newline is an editor's, never part of the secret.
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"cannot read {key} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{key} {path} is not UTF-8 text") from None


def with_url_password(
    data: Any,
    *,
    user_required: str | None = None,
    url_key: str = "url",
    file_key: str = "password_file",
) -> Any:
    """``data`` with the content of its ``file_key`` as the password in its ``url_key``
    (percent-encoded; the user name, if any, stays). ``user_required``: the message when the
    url must name a user and does not."""
    if not (isinstance(data, dict) and data.get(file_key)):
        return data
    password = read_secret(Path(data[file_key]), file_key)
    url = data.get(url_key)
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    if not isinstance(url, str):
        return data  # the url's own validation reports what is wrong with it
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    if user_required and not (at and user):
        raise ValueError(user_required)
    netloc = f"{user}:{quote(password, safe='')}@{hostport}"
    return {**data, url_key: urlunsplit(parts._replace(netloc=netloc))}
