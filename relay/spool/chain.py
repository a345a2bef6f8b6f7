"""Puts that must be stored in the order they were queued, or not at all.

The MQTT source queues each message's put without waiting, and acknowledges it after its
commit. If one is refused (a full disk) while later ones would go through, the broker would
send the refused one again after those: out of order. A :class:`Chain` (one per broker
connection) refuses everything after the first refusal on it, so that what the producer
gives back and sends again cannot land behind what came after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from relay.errors import SpoolError
from relay.spool.txn import Txn
from relay.spool.writer import Reply

T = TypeVar("T")


class Chain:
    """Once a put on it is refused, every later one is refused too. Read and set on the
    writer thread."""

    def __init__(self) -> None:
        self.broken: SpoolError | None = None


def chained(apply: Callable[[Txn], T], chain: Chain | None) -> Callable[[Txn], T]:
    """``apply``, refused once ``chain`` is broken, and breaking it when refused."""
    if chain is None:
        return apply

    def apply_chained(t: Txn) -> T:
        if chain.broken is not None:
            raise SpoolError(f"not stored after an earlier refusal: {chain.broken}")
        try:
            return apply(t)
        except SpoolError as exc:  # refused alone; the rest of its commit goes on
            chain.broken = exc
            raise

    return apply_chained


def chain_reply(reply: Reply[T], chain: Chain | None) -> Reply[T]:
    """``reply``, breaking ``chain`` first when the whole commit failed: the writer runs the
    replies before it starts the next commit, so nothing later on the chain is tried."""
    if chain is None:
        return reply

    def replied(result: T | None, error: SpoolError | None) -> None:
        if error is not None and chain.broken is None:
            chain.broken = error
        reply(result, error)

    return replied
