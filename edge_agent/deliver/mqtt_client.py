"""One way to build the MQTT client (and, through `edge_agent.deliver.topics`, its topics), for the agent's publisher and for ``edge-agent retrain``.

Why one: the two used to differ (the CLI skipped TLS when only a client certificate was configured), so a
command tool could connect in clear text where the agent used TLS. Everything that decides how a connection is
made from ``[mqtt]`` lives here.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig


def default_client_id(config: MqttConfig, device_id: str) -> str:
    return config.client_id or f"{config.topic_prefix}-{device_id}"


def make_client(config: MqttConfig, client_id: str, mqtt5: bool = False, manual_ack: bool = False) -> mqtt.Client:
    """A paho client with the credentials and TLS that ``[mqtt]`` asks for (not yet connected).

    TLS is on when a CA file or a client certificate is given; without ``tls_ca`` the system's CA store is trusted.
    The password is read now (environment or file), so a missing secret fails here, naming the key.
    The agent speaks MQTT 3.1.1 with a clean session. ``mqtt5`` is for the fleet's collector (shared subscriptions,
    a session expiry given at connect, where MQTT 5 has no clean-session flag); with ``manual_ack`` a QoS 1
    message is acknowledged only when the caller says so (``client.ack``), e.g. after its row is committed.
    """
    session = {"protocol": mqtt.MQTTv5} if mqtt5 else {"clean_session": True}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, manual_ack=manual_ack, **session)
    if config.username:
        client.username_pw_set(config.username, config.password())
    if config.tls_ca or config.tls_cert:
        client.tls_set(ca_certs=config.tls_ca or None, certfile=config.tls_cert or None,
                       keyfile=config.tls_key or None)
    return client
