"""Send a command to the running agent over MQTT and wait for its reply (``edge-agent retrain``, the timer).

Why MQTT and not a local socket: it is the path operators and PLCs already use, so the shift-start timer
exercises exactly what a remote retrain does, and the reply tells the timer's journal whether it worked.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

from edge_agent.config import Config
from edge_agent.deliver.mqtt_client import make_client
from edge_agent.deliver.topics import Topics


class CommandTimeout(RuntimeError):
    """No reply from the agent in time."""


def send_command(config: Config, name: str, payload: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    m = config.mqtt
    topics = Topics(m.topic_prefix, config.device.id)
    request_id = uuid.uuid4().hex
    secret = m.command_token()
    token = {"token": secret} if secret is not None else {}
    reply: dict[str, Any] = {}
    got = threading.Event()
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason, properties):
        if reason.is_failure:
            reply.update(ok=False, error=f"broker refused the connection: {reason}")
            got.set()
            return
        client.subscribe(topics.command_result(name), qos=1)

    def on_subscribe(client, userdata, mid, reasons, properties):
        client.publish(topics.command(name), json.dumps({**payload, **token, "request_id": request_id}), qos=1)
        subscribed.set()

    def on_message(client, userdata, msg):
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if data.get("request_id") == request_id:
            reply.update(data)
            got.set()

    client = make_client(m, f"edge-agent-cli-{request_id[:8]}")
    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(m.host, m.port, keepalive=m.keepalive)
    except OSError as exc:
        raise CommandTimeout(f"cannot reach the broker at {m.host}:{m.port}: {exc}") from None
    client.loop_start()
    try:
        if not got.wait(timeout):
            where = "after sending" if subscribed.is_set() else "before sending (broker or subscription)"
            raise CommandTimeout(f"no reply to {name} within {timeout:.0f} s {where}: is the agent running?")
    finally:
        client.disconnect()
        client.loop_stop()
    return reply
