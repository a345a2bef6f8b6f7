"""Which subscriber of the MQTT connection a message goes to."""

from __future__ import annotations

from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher

from relay.mqtt.session import Message, Subscriber


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (MQTT wildcards)."""
    return bool(mqtt.topic_matches_sub(topic_filter, topic))


class Routes:
    """Which subscriber gets a message: every observer whose filter matches, and one
    consumer, the first whose filter matches. A message no filter matches goes to the first
    consumer: the broker may keep a subscription of an earlier config in relay's session,
    and relay stores what the broker hands it rather than drop it."""

    def __init__(self, consumers: Sequence[Subscriber], observers: Sequence[Subscriber]):
        self._first = consumers[0] if consumers else None
        self._alone = len(consumers) == 1 and not observers  # no need to look at the topic
        self._consumers = MQTTMatcher()  # type: ignore[no-untyped-call]
        self._observers = MQTTMatcher()  # type: ignore[no-untyped-call]
        for matcher, subscribers in ((self._consumers, consumers), (self._observers, observers)):
            for subscriber in subscribers:
                for topic, _ in subscriber.subscriptions():
                    try:
                        matcher[topic].append(subscriber)
                    except KeyError:
                        matcher[topic] = [subscriber]

    def deliver(self, msg: Message) -> None:
        if self._alone:
            assert self._first is not None
            self._first.on_message(msg)
            return
        try:
            topic = msg.topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = None  # matches no filter; the consumer dead-letters it
        observers = _matched(self._observers, topic)
        for observer in observers:
            observer.on_message(msg)
        consumer = next(iter(_matched(self._consumers, topic)), None)
        if consumer is not None:
            consumer.on_message(msg)
        elif observers or self._first is None:
            msg.ack()
        else:
            self._first.on_message(msg)


def _matched(matcher: MQTTMatcher, topic: str | None) -> list[Subscriber]:
    if topic is None:
        return []
    found: list[Subscriber] = []
    for subscribers in matcher.iter_match(topic):  # type: ignore[no-untyped-call]
        found.extend(s for s in subscribers if s not in found)
    return found
