"""HTTP devices: a command is one request (POST of a JSON body by default) with httpx.

A connection that could not be opened means the device never saw the command: retried. Any
later failure (a timeout while waiting for the answer, a 5xx) means it may have acted:
failed, never repeated. The request carries ``Idempotency-Key: <command id>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from relay import http_client
from relay.config import HttpDeviceConfig
from relay.devices import render
from relay.errors import DeviceError, DeviceUnavailable
from relay.http_client import Deadline


class HttpDevice:
    not_retried: frozenset[str] = frozenset()

    def __init__(self, cfg: HttpDeviceConfig, *, transport: httpx.BaseTransport | None = None):
        self.name = cfg.name
        self.actions = frozenset(cfg.actions)
        self._cfg = cfg
        self._where = urlsplit(cfg.url).netloc
        self._deadline = Deadline(f"device-{cfg.name}")
        self._client = http_client.client(
            timeout=cfg.timeout_s, headers={**cfg.headers, **_bearer(cfg)}, transport=transport
        )

    def run(self, action: str, args: Mapping[str, Any], *, command_id: str, timeout: float) -> None:
        body = render(self._cfg.body, command_id=command_id, action=action, args=args)
        try:
            with self._deadline.guard(timeout):
                response = self._client.request(
                    self._cfg.method,
                    self._cfg.url,
                    json=body,
                    timeout=timeout,
                    headers={"Idempotency-Key": command_id},
                    extensions={"trace": self._deadline.trace},
                )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nothing was sent: the device cannot have acted on it.
            raise DeviceUnavailable(f"cannot reach {self._where}: {exc}") from exc
        except httpx.HTTPError as exc:
            # httpx's per-read timeout (as long as the deadline) may fire first: same news.
            late = self._deadline.expired or isinstance(exc, httpx.TimeoutException)
            what = f"no answer within {timeout:g}s" if late else str(exc)
            raise DeviceError(f"{self._where}: {what} (it may have acted)") from exc
        if not response.is_success:
            raise DeviceError(
                f"HTTP {response.status_code} from {self._where}: {response.text[:200].strip()}"
            )

    def close(self) -> None:
        self._client.close()
        self._deadline.close()


def _bearer(cfg: HttpDeviceConfig) -> dict[str, str]:
    """``token`` (or ``token_file``) as an Authorization header, as the HTTP sink sends it."""
    return {} if cfg.token is None else {"Authorization": f"Bearer {cfg.token.get_secret_value()}"}
