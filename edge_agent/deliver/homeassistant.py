"""Home Assistant MQTT discovery (``[homeassistant]``, docs/homeassistant.md): the retained config payloads under
``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` that make the camera appear as one device.

Why no topics of its own: every entity reads a topic the agent already publishes (``state``, ``verdict``,
``alert/image``, through ``value_template``) or sends to one it already listens on (``cmd/<name>``), so Home
Assistant sees exactly what every other subscriber sees, and a command from it goes through the same validation.
The buttons send Home Assistant's default ``PRESS`` (`edge_agent.deliver.messages.command_args` reads it as "no
arguments"); the sensitivity slider turns its value into ``{"sensitivity": x}`` with a ``command_template``, so
the command path stays JSON. No command token can ride along: it would sit in a retained payload that every
client allowed to subscribe reads (`edge_agent.config` refuses the combination).

Taking entities back: the config topics published are remembered in ``<state_dir>/homeassistant.json``. A start
with the section off (or with fewer entities) publishes an empty retained payload on each remembered topic it no
longer announces, which makes Home Assistant remove the entity, and forgets them once the broker acknowledged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge_agent.deliver.messages import ANOMALOUS, GOOD, to_json
from edge_agent.deliver.topics import Topics
from edge_agent.learn.threshold import SENSITIVITY_RANGE
from edge_agent.system.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: The file in ``[device] state_dir`` that remembers the config topics published.
RECORD_FILE = "homeassistant.json"
#: Home Assistant's own default discovery prefix, and where it says "online" when it (re)starts (its birth message).
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
BIRTH_PAYLOAD = b"online"
#: The sensitivity slider's step: 21 positions, each moving the false-reject target by a factor of about 1.26.
SENSITIVITY_STEP = 0.05

def _entities(t: Topics) -> dict[tuple[str, str], dict[str, Any]]:
    """(component, object id) -> the entity's own keys; the device, availability and ids are added by `configs`."""
    state, verdict = t("state"), t("verdict")
    low, high = SENSITIVITY_RANGE
    return {
        ("binary_sensor", "verdict"): {
            "name": "Last verdict", "device_class": "problem", "state_topic": verdict,
            "value_template": "{{ value_json.verdict }}", "payload_on": ANOMALOUS, "payload_off": GOOD},
        ("sensor", "score"): {
            "name": "Score", "state_topic": verdict, "value_template": "{{ value_json.score }}",
            "state_class": "measurement"},
        ("sensor", "threshold"): {
            "name": "Threshold", "state_topic": state, "value_template": "{{ value_json.threshold }}"},
        ("sensor", "reject_rate"): {
            "name": "Reject rate", "state_topic": state, "unit_of_measurement": "%", "state_class": "measurement",
            # None (no part yet) renders "None", which Home Assistant shows as unknown.
            "value_template": "{{ (value_json.reject_rate * 100) | round(2) if value_json.reject_rate is not none "
                              "else None }}"},
        ("sensor", "status"): {
            "name": "Status", "state_topic": state, "value_template": "{{ value_json.status }}"},
        ("image", "alert"): {
            "name": "Last alert", "image_topic": t("alert/image"), "content_type": "image/jpeg"},
        ("button", "retrain"): {"name": "Retrain", "command_topic": t.command("retrain")},
        ("button", "rollback"): {"name": "Roll back", "command_topic": t.command("rollback")},
        ("number", "sensitivity"): {
            "name": "Sensitivity", "command_topic": t.command("threshold"),
            "command_template": '{"sensitivity": {{ value }}}', "state_topic": state,
            "value_template": "{{ value_json.sensitivity }}", "min": low, "max": high, "step": SENSITIVITY_STEP,
            "mode": "slider"},
    }


class Discovery:
    """What the agent announces to Home Assistant (``prefix`` None: nothing) and what it must take back."""

    def __init__(self, prefix: str | None, topics: Topics, device_id: str, state_dir: Path) -> None:
        self.prefix = prefix
        self.topics = topics
        self.device_id = device_id  # also the node id: with the section on, the configuration checked it
        self.record = state_dir / RECORD_FILE

    @property
    def enabled(self) -> bool:
        return self.prefix is not None

    @property
    def status_topic(self) -> str:
        """Where Home Assistant announces itself; ``online`` there means "send your configs again"."""
        return f"{self.prefix}/status"

    def _topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.device_id}/{object_id}/config"

    def config_topics(self) -> set[str]:
        if not self.enabled:
            return set()
        return {self._topic(component, object_id) for component, object_id in _entities(self.topics)}

    def configs(self, state: dict[str, Any]) -> dict[str, bytes]:
        """Config topic -> payload, with the device block taken from the agent's ``state`` (model id, version,
        detector); empty when off."""
        if not self.enabled:
            return {}
        device = {"identifiers": [f"edge_inspect_{self.device_id}"], "name": self.device_id,
                  "manufacturer": "edge-inspect", "model": f"anomaly detector ({state.get('detector') or 'unfitted'})",
                  "model_id": state.get("model_id"), "sw_version": state.get("version")}
        common = {"availability_topic": self.topics("availability"), "payload_available": "online",
                  "payload_not_available": "offline", "qos": 1, "device": device,
                  "origin": {"name": "edge-agent", "sw_version": state.get("version")}}
        return {self._topic(component, object_id): to_json({
                    **keys, "unique_id": f"edge_inspect_{self.device_id}_{object_id}", **common})
                for (component, object_id), keys in _entities(self.topics).items()}

    def recorded(self) -> set[str]:
        """The config topics a previous start published (and has not taken back yet)."""
        try:
            topics = json.loads(self.record.read_text())["topics"]
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("Home Assistant: cannot read %s (%s): entities announced before may stay in Home Assistant; "
                        "delete them there", self.record, exc)
            return set()
        return {t for t in topics if isinstance(t, str)}

    def stale(self) -> set[str]:
        """Remembered config topics this start does not announce: to be emptied."""
        return self.recorded() - self.config_topics()

    def remember(self) -> None:
        """Before connecting: the record names every topic this start may publish, and the stale ones until the
        broker acknowledged their removal (a crash in between repeats the removal at the next start)."""
        recorded = self.recorded()
        if not self.config_topics() <= recorded:
            self._write(recorded | self.config_topics())

    def forget_stale(self) -> None:
        """The broker acknowledged the empty payloads: keep only what is announced now."""
        self._write(self.config_topics())
        log.info("Home Assistant: entities no longer announced were removed")

    def _write(self, topics: set[str]) -> None:
        if topics:
            write_text_atomic(self.record, json.dumps({"topics": sorted(topics)}, indent=1) + "\n")
        else:
            self.record.unlink(missing_ok=True)
