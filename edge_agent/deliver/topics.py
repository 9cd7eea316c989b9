"""The agent's MQTT topics, ``<prefix>/<device>/<name>``, and what a prefix or a device id may contain.

Apart from the client factory so that the configuration can refuse an unusable device id or prefix at load time,
naming the key, without importing the MQTT client.
"""

from __future__ import annotations

import re

#: What Home Assistant allows in a discovery node id, which is the device id (`edge_agent.deliver.homeassistant`).
_NODE_ID = re.compile(r"[a-zA-Z0-9_-]+")


def check_topic_level(what: str, value: str, one_level: bool = False) -> None:
    """Refuse a prefix, device id or group that would change the meaning of a topic (wildcards, NUL; with
    ``one_level``, an extra level: a prefix may hold several, a device id or a shared-subscription group one)."""
    if not value or any(c in value for c in "+#\0") or (one_level and "/" in value):
        raise ValueError(f"{what} {value!r} is not usable in an MQTT topic")


def check_node_id(device_id: str) -> None:
    """Refuse a device id that Home Assistant cannot take as a node id. Not sanitised on the fly: ``line 3.cam``
    as ``line_3_cam`` would miss the broker ACL's ``%u`` (the camera's user is its device id) and could collide
    with another camera called ``line_3_cam``."""
    if not _NODE_ID.fullmatch(device_id):
        raise ValueError(f"device id {device_id!r} has characters Home Assistant's discovery does not allow "
                         "(only a-z A-Z 0-9 _ -)")


class Topics:
    """``<prefix>/<device>/<name>``: every topic the agent publishes or listens on."""

    def __init__(self, prefix: str, device_id: str) -> None:
        check_topic_level("topic_prefix", prefix)
        check_topic_level("device_id", device_id, one_level=True)
        self.base = f"{prefix}/{device_id}"

    def __call__(self, name: str) -> str:
        return f"{self.base}/{name}"

    def command(self, name: str) -> str:
        return self(f"cmd/{name}")

    def command_result(self, name: str) -> str:
        return self(f"cmd/{name}/result")
