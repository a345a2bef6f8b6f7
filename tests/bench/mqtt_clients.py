"""Helper processes for mqtt_bench.py (each in its own process, so none shares a GIL).

    python mqtt_clients.py publish HOST PORT TOPIC N      QoS 1 as fast as paho goes
    python mqtt_clients.py subscribe HOST PORT TOPIC N    plain paho, auto-ack, counts to N
Both print "ready" when set up, then the CLOCK_MONOTONIC time at which they finished.
"""

from __future__ import annotations

import json
import sys
import threading
import time

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


if __name__ == "__main__":
    role, host, port, topic, n = sys.argv[1:6]
    {"publish": publish, "subscribe": subscribe}[role](host, int(port), topic, int(n))
