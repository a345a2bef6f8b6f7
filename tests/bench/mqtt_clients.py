"""Helper processes for mqtt_bench.py (each in its own process, so none shares a GIL).

    python mqtt_clients.py publish HOST PORT TOPIC N      QoS 1 as fast as paho goes
    python mqtt_clients.py subscribe HOST PORT TOPIC N    plain paho, auto-ack, counts to N
Both print "ready" when set up, then the CLOCK_MONOTONIC time at which they finished.

    python mqtt_clients.py bridge HOST PORT TOPIC URL     plain paho -> httpx, no spool
prints "ready" once subscribed and forwards until its standard input closes.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def publish(host: str, port: int, topic: str, n: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    done = threading.Semaphore(0)
    client.on_publish = lambda *a: done.release()
    client.connect(host, port)
    client.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()  # go
    for i in range(n):
        client.publish(topic, json.dumps({"n": i, "state": "open"}), qos=1)
    for _ in range(n):
        done.acquire()
    print(time.monotonic(), flush=True)
    client.loop_stop()
    client.disconnect()


def subscribe(host: str, port: int, topic: str, n: int) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain-sub", clean_session=True)
    count = [0]
    finished = threading.Event()
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        count[0] += 1
        if count[0] == n:
            finished.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    subscribed.wait()
    print("ready", flush=True)
    finished.wait()
    print(time.monotonic(), flush=True)
    client.loop_stop()
    client.disconnect()


def bridge(host: str, port: int, topic: str, url: str) -> None:
    """The least an MQTT -> HTTP relay can do: POST each message from paho's callback, in
    relay's event shape, with nothing stored (a crash loses what is in flight); paho acks
    after the callback returns. The baseline of agent_bench.py's end-to-end latency."""
    http = httpx.Client()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bridge-{uuid.uuid4().hex[:8]}")
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        event = {"id": uuid.uuid4().hex, "name": m.topic, "payload": json.loads(m.payload)}
        http.post(url, content=json.dumps(event), headers={"Content-Type": "application/json"})

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(host, port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    subscribed.wait()
    print("ready", flush=True)
    sys.stdin.read()
    client.loop_stop()
    client.disconnect()
    http.close()


if __name__ == "__main__":
    role, host, port, topic, last = sys.argv[1:6]
    if role == "bridge":
        bridge(host, int(port), topic, last)
    else:
        {"publish": publish, "subscribe": subscribe}[role](host, int(port), topic, int(last))
