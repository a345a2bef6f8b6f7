"""relay's MQTT connection: one per agent, shared by everything that speaks MQTT.

    connection.py  ``MqttConnection``: the paho client, its network loop and reconnects,
                   subscriptions and routing, publishes (raising ``relay.errors.PublishError``)
    session.py     ``Message``, ``Session`` (one connection: acks only on it) and the
                   ``Subscriber`` protocol that sources, commands and Home Assistant follow
    routes.py      which subscriber gets a message
    memo.py        what the broker's kept session holds, across restarts

The MQTT source (``relay.sources.mqtt``), device commands over MQTT, MQTT devices and Home
Assistant discovery use it; only ``relay.wiring`` builds it, and only this package imports
paho.
"""

from relay.mqtt.session import Message, Session, Subscriber

__all__ = ["Message", "Session", "Subscriber"]
