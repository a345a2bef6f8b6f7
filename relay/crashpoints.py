"""Crash points for the fault tests: ``RELAY_CRASHPOINT=<name>`` makes relay die (SIGKILL,
no clean-up) or hang at that exact spot, so each dangerous window can be hit on purpose.
Unset, as in production, every call here is a string comparison that is False.

    crash("before_commit")             the spool writer is about to COMMIT a batch
    crash("after_commit")              the batch is committed; no caller has been told yet
    crash("after_commit_before_ack")   the MQTT PUBACK is about to go out after the commit
    crash("after_send_before_ack")     a sink took a batch (HTTP 2xx, AMQP confirms); the
                                       forwarder has not acked it in the spool yet
    wedge("forwarder.send")           a forwarder's send never returns (watchdog tests)

An AMQP window that is published but not yet confirmed has no point of its own: for the
spool it is the state ``after_send_before_ack`` leaves (sent, maybe taken, not acked).

``RELAY_CRASHPOINT=name:N`` fires on the N-th time the point is reached (default: the first).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading

_NAME, _, _NTH = os.environ.get("RELAY_CRASHPOINT", "").partition(":")
_AT = int(_NTH) if _NTH.isdigit() else 1
_hits = itertools.count(1)  # next() on it is atomic under the GIL


def _due(name: str) -> bool:
    return name == _NAME and next(_hits) == _AT


def crash(name: str) -> None:
    """Die here, as a power cut or kill -9 would, when this point is armed."""
    if _due(name):
        os.kill(os.getpid(), signal.SIGKILL)


def wedge(name: str) -> None:
    """Block this thread forever here, when this point is armed."""
    if _due(name):
        threading.Event().wait()
