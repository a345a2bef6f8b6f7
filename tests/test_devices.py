"""Device drivers at their libraries' seams: the HTTP device on httpx.MockTransport (and once
against the real local server); the JSON templates."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from relay.config import HttpDeviceConfig
from relay.devices import render
from relay.devices.http import HttpDevice
from relay.errors import DeviceError, DeviceUnavailable
from tests.helpers.http_server import RemoteServer

MakeHeater = Callable[..., HttpDevice]


@pytest.fixture
def heater() -> Iterator[MakeHeater]:
    """``heater(handler, **config)``: an HttpDevice on ``httpx.MockTransport(handler)``;
    every one made is closed at the end of the test (each has a deadline thread)."""
    made: list[HttpDevice] = []

    def make(handler: object, **cfg: object) -> HttpDevice:
        config = HttpDeviceConfig.model_validate(
            {"name": "heater", "type": "http", "url": "http://heater.local/rpc", **cfg}
        )
        made.append(HttpDevice(config, transport=httpx.MockTransport(handler)))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for device in made:
        device.close()


def test_http_device_posts_the_rendered_body(heater: MakeHeater) -> None:
    seen: list[httpx.Request] = []
    device = heater(lambda r: seen.append(r) or httpx.Response(200))
    device.run("on", {"level": 3}, command_id="c-1", timeout=5)
    device.close()
    [r] = seen
    assert r.method == "POST" and json.loads(r.content) == {
        "id": "c-1",
        "action": "on",
        "args": {"level": 3},
    }
    assert r.headers["Idempotency-Key"] == "c-1"


def test_http_device_custom_method_and_body(heater: MakeHeater) -> None:
    seen: list[httpx.Request] = []
    device = heater(
        lambda r: seen.append(r) or httpx.Response(204),
        method="PUT",
        body={"power": "{action}", "temp": "{args.t}", "fixed": [1, "{id}"]},
    )
    device.run("off", {"t": 21.5}, command_id="x", timeout=5)
    assert json.loads(seen[0].content) == {"power": "off", "temp": 21.5, "fixed": [1, "x"]}
    assert seen[0].method == "PUT"


def test_refused_connection_is_unavailable_so_retried(heater: MakeHeater) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(DeviceUnavailable, match=r"cannot reach heater\.local"):
        heater(refuse).run("on", {}, command_id="c", timeout=5)


@pytest.mark.parametrize("error", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof")])
def test_failure_after_sending_is_never_retried(heater: MakeHeater, error: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(DeviceError) as info:
        heater(fail).run("on", {}, command_id="c", timeout=5)
    assert not isinstance(info.value, DeviceUnavailable)
    assert "may have acted" in str(info.value)


def test_error_status_fails(heater: MakeHeater) -> None:
    with pytest.raises(DeviceError, match=r"HTTP 500 from heater\.local: overheated"):
        heater(lambda r: httpx.Response(500, text="overheated")).run(
            "on", {}, command_id="c", timeout=5
        )


def test_templates_place_values_and_never_splice() -> None:
    template = {"state": "{action}", "note": "say {action}", "args": "{args}", "x": "{args.x}"}
    evil = {"x": '"}, "admin": true, {"', "y": 1}
    out = render(template, command_id="i", action="on", args=evil)
    assert out == {"state": "on", "note": "say {action}", "args": evil, "x": evil["x"]}
    assert json.loads(json.dumps(out))["x"] == evil["x"]  # a string, not structure


def test_http_device_sends_its_token_file_as_a_bearer_token(tmp_path: Path) -> None:
    """Against the real local server: ``token_file`` (as for the HTTP sink) becomes
    ``Authorization: Bearer ...``; the token stays out of the config's repr."""
    (tmp_path / "heater.token").write_text("s3cret-token\n")
    with RemoteServer() as server:
        config = HttpDeviceConfig.model_validate(
            {
                "name": "heater",
                "type": "http",
                "url": server.url,
                "token_file": str(tmp_path / "heater.token"),
                "headers": {"X-Home": "hall"},
            }
        )
        device = HttpDevice(config)
        try:
            device.run("on", {}, command_id="c-7", timeout=5)
        finally:
            device.close()
    [request] = server.received
    assert request.headers["Authorization"] == "Bearer s3cret-token"
    assert request.headers["X-Home"] == "hall"
    assert "s3cret-token" not in repr(config)
