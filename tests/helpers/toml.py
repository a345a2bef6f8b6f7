"""relay.toml from parts, for the tests and the fault harness: a small renderer of Python
values as TOML, and one builder per section with keyword arguments for its keys.

    write_config(
        toml.mqtt_in(1883, "home"),                      # [mqtt], and a source on home/#
        toml.http_sink(server.url, retry_initial="50ms"),
        toml.commands(mqtt_topic="cmd/+", ttl_s=30),
        toml.http_device(device.url, actions=["on", "off"]),
    )

A key whose value is None is left out; any other is written as it is: strings (and paths)
quoted, numbers and booleans bare, lists as arrays, dicts as inline tables. A config that is
the subject of a test (a syntax error, an unknown key) is better written out by hand.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any


def value(v: Any) -> str:
    """``v`` as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def keys(**kv: Any) -> str:
    """``key = value`` lines, in order; None values left out."""
    return "".join(f"{k} = {value(v)}\n" for k, v in kv.items() if v is not None)


def table(header: str, /, **kv: Any) -> str:
    """A ``[header]`` table."""
    return f"[{header}]\n" + keys(**kv)


def array_table(header: str, /, **kv: Any) -> str:
    """One ``[[header]]`` table: an element of ``sources``, ``sinks`` or ``devices``."""
    return f"[[{header}]]\n" + keys(**kv)


def document(*parts: str, **top: Any) -> str:
    """Top-level keys (``node``, ``state_dir``, ``log_level``) first, then the parts."""
    return keys(**top) + "".join(parts)


def write(path: Path, *parts: str, **top: Any) -> Path:
    """Write :func:`document` to ``path``, mode 0640 as the installer writes /etc/relay.toml
    (``relay run`` refuses a file every user may read while it holds a secret)."""
    path.write_text(document(*parts, **top))
    path.chmod(0o640)
    return path


# ------------------------------------------------------------------ sections


def mqtt(
    port: int = 1883, *, host: str = "127.0.0.1", client_id: str | None = None, **kv: Any
) -> str:
    """``[mqtt]`` at ``host:port``, with a client id of its own unless one is given (a broker
    keeps one session per client id)."""
    cid = client_id or f"relay-test-{uuid.uuid4().hex[:10]}"
    return table("mqtt", host=host, port=port, client_id=cid, **kv)


def mqtt_source(*topics: str, **kv: Any) -> str:
    return array_table("sources", type="mqtt", topics=list(topics), **kv)


def mqtt_in(
    port: int,
    topic: str,
    *,
    host: str = "127.0.0.1",
    client_id: str | None = None,
    keepalive_s: int = 10,
    qos: int = 1,
    **mqtt_kv: Any,
) -> str:
    """What the ingest tests run: ``[mqtt]`` at ``host:port`` (keys ``mqtt_kv``) and one MQTT
    source on ``topic/#`` at ``qos``."""
    broker = mqtt(port, host=host, client_id=client_id, keepalive_s=keepalive_s, **mqtt_kv)
    return broker + mqtt_source(f"{topic}/#", qos=qos)


def gpio_source(pin: int, name: str, **kv: Any) -> str:
    return array_table("sources", type="gpio", pin=pin, name=name, **kv)


def http_sink(url: str, *, name: str = "cloud", **kv: Any) -> str:
    return array_table("sinks", name=name, type="http", url=url, **kv)


def amqp_sink(url: str, *, name: str = "bus", **kv: Any) -> str:
    return array_table("sinks", name=name, type="amqp", url=url, **kv)


def redis_sink(url: str, stream: str, *, name: str = "work", **kv: Any) -> str:
    return array_table("sinks", name=name, type="redis", url=url, stream=stream, **kv)


def http_device(url: str, *, name: str = "heater", **kv: Any) -> str:
    return array_table("devices", name=name, type="http", url=url, **kv)


def mqtt_device(topic: str, *, name: str = "lamp", **kv: Any) -> str:
    return array_table("devices", name=name, type="mqtt", topic=topic, **kv)


def commands(**kv: Any) -> str:
    return table("commands", **kv)


def spool(**kv: Any) -> str:
    return table("spool", **kv)


def gpio(pin_factory: str = "mock") -> str:
    return table("gpio", pin_factory=pin_factory)


def metrics(listen: str) -> str:
    return table("metrics", listen=listen)


def homeassistant(**kv: Any) -> str:
    return table("homeassistant", **kv)
