"""What the AMQP sink hands pika and reads back from it: connection parameters (URL,
heartbeat, timeouts, TLS), the properties each event is published with, and the reason
buried in pika's nested exceptions. Pure functions: no connection, no I/O.
"""

from __future__ import annotations

import ssl
import time
from datetime import datetime
from typing import Any

import pika

from relay.config import AmqpSinkConfig
from relay.errors import ConfigError
from relay.event import Event


def parameters(cfg: AmqpSinkConfig) -> Any:
    """pika's connection parameters; ``ConfigError`` for what only pika can check."""
    try:
        params = pika.URLParameters(cfg.url.get_secret_value())
    except ValueError as exc:  # say, ?heartbeat=abc (pika names the value, never the URL)
        raise ConfigError([f"sinks.{cfg.name}.url: {exc}"]) from None
    params.heartbeat = cfg.heartbeat_s  # pika 1.x: the client's value wins over the broker's
    params.connection_attempts = 1  # the forwarder retries, with backoff
    params.socket_timeout = cfg.timeout_s
    params.stack_timeout = cfg.timeout_s
    params.client_properties = {"connection_name": f"relay sink {cfg.name}"}
    if params.ssl_options is not None:  # amqps://
        try:
            context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        except OSError as exc:  # ssl.SSLError is one too
            raise ConfigError([f"sinks.{cfg.name}.ca_file: {exc.strerror or exc}"]) from None
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params


def properties(event: Event) -> Any:
    """The AMQP properties relay publishes ``event`` with: ``message_id`` = the event id
    (receivers dedupe on it), persistent, JSON."""
    return pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=event.id,
        timestamp=_timestamp(event),
        headers={"node": event.node, "source": event.source},
    )


def _timestamp(event: Event) -> int:
    """The event's time as AMQP has it: whole seconds since the epoch."""
    try:
        return int(datetime.fromisoformat(event.time).timestamp())
    except ValueError:
        return int(time.time())


def reply_code(reason: BaseException) -> int | None:
    code = getattr(reason, "reply_code", None)
    return code if isinstance(code, int) else None


def describe(exc: BaseException | None) -> str:
    """The innermost reason in pika's wrappers: "Connection refused", "320 CONNECTION_FORCED
    - broker forced connection closure with reason 'shutdown'", ..."""
    for _ in range(10):
        nested = getattr(exc, "exceptions", None)  # AMQPConnectionWorkflowFailed: attempts
        inner = getattr(exc, "exception", None)  # AMQPConnectorPhaseErrorBase: one phase's
        if nested:
            exc = nested[-1]
        elif isinstance(inner, BaseException):
            exc = inner
        elif exc is not None and exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            break
    if exc is None:
        return "unknown reason"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if reply_code(exc) is not None:
        return f"{reply_code(exc)} {getattr(exc, 'reply_text', '')}".strip()
    return str(exc) or type(exc).__name__
