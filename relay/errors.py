"""The exceptions relay raises, and what each means to the caller.

    RelayError
    ├── ConfigError          the config is wrong; the CLI exits 78 (EX_CONFIG)
    ├── SpoolError           the spool could not do what was asked (disk full, read-only, ...)
    │   ├── SpoolFull        no room and ``when_full = "reject"``: push back on the producer
    │   ├── SpoolClosed      the spool was closed while the call waited
    │   └── DiskUnavailable  the disk holding the state dir is full or read-only: the agent
    │                        waits for it rather than exit
    ├── AlreadyRunning       another agent holds the state directory
    ├── NotRunning           no agent holds it, and the caller needs one (relay command --wait)
    ├── SendError            a sink could not deliver (raised by sinks, handled by forwarders)
    │   ├── TransientError   retry later, forever (or until ``max_age``)
    │   └── PermanentError   counts toward ``max_retries``, then the event is dead-lettered
    ├── DeviceError          a device command failed (outcome "failed"; never retried)
    │   └── DeviceUnavailable  the device could not be reached before it took the command:
    │                          reconnect and retry the same command, until its TTL
    └── PublishError         a publish on relay's MQTT connection did not complete
        ├── NotConnected     nothing was sent: there is no connection to the broker now
        └── Unconfirmed      sent, but the broker did not acknowledge it in time; it may
                             still arrive (paho sends it again after a reconnect)

Sinks translate their library's exceptions into exactly these two ``SendError`` kinds, once,
in the adapter, chaining the cause; the forwarder never looks at an HTTP status or a pika
exception. The MQTT connection raises the ``PublishError`` kinds; what they mean to a device
command is ``relay.devices.mqtt``'s to say.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SpoolError(RelayError):
    """The spool could not complete an operation; the operation did not happen."""


class SpoolFull(SpoolError):
    """The spool is at its size cap and ``when_full = "reject"``."""


class SpoolClosed(SpoolError):
    """The spool is closed."""


class DiskUnavailable(SpoolError):
    """The disk holding the spool cannot be written (full, or read-only): nothing is wrong
    with relay or its config, and it may pass."""


class AlreadyRunning(RelayError):
    """Another agent already runs on the same state directory."""


class NotRunning(RelayError):
    """No agent runs on the state directory, and what was asked needs one."""


class SendError(RelayError):
    """A sink failed to deliver a batch.

    ``delivered`` counts how many events at the front of the batch the far end did take
    (for windowed sinks); the forwarder acks those and retries the rest.
    """

    def __init__(self, message: str, *, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class TransientError(SendError):
    """Worth retrying: the far end is down, slow, or asked us to come back later."""

    def __init__(
        self, message: str, *, delivered: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message, delivered=delivered)
        self.retry_after = retry_after


class PermanentError(SendError):
    """The far end refused an event; retrying the same bytes will not help.

    ``exact``: the refused event is the one right after the ``delivered`` ones (a sink that
    hears of each event, such as AMQP and Redis). Otherwise the whole batch was refused and
    the forwarder looks for the event that was."""

    def __init__(self, message: str, *, delivered: int = 0, exact: bool = False) -> None:
        super().__init__(message, delivered=delivered)
        self.exact = exact


class DeviceError(RelayError):
    """The command reached the device, or may have: it is not run again."""


class DeviceUnavailable(DeviceError):
    """The device was not reached, so it did not take the command: safe to retry."""


class PublishError(RelayError):
    """A publish on the MQTT connection failed or is not known to have arrived."""


class NotConnected(PublishError):
    """Not connected to the broker: nothing was sent."""


class Unconfirmed(PublishError):
    """Sent, but not acknowledged by the broker in time: it may still arrive."""
