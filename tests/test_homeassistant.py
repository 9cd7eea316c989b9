"""Home Assistant MQTT discovery against a real Mosquitto and a real agent on real images: what Home Assistant would
read, and that its default button payload, its slider template and its birth message really work.

The templates are rendered with Jinja2, the engine Home Assistant renders ``value_template`` and
``command_template`` with, on the payloads the agent really published.
"""

from __future__ import annotations

import json
import re

import jinja2
import pytest

from edge_agent.deliver.homeassistant import RECORD_FILE, Discovery
from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import Spool
from edge_agent.deliver.topics import Topics
from tests.mqtt_broker import BASE, DEVICE, PREFIX, Subscriber, close_publishers, settings_for, started, wait_until
from tests.test_agent import Rig, command, retained_state

HA = "homeassistant"
#: Home Assistant's MQTT button sends this when its discovery config sets no ``payload_press`` (its documented default).
HA_DEFAULT_PRESS = "PRESS"
#: The keys Home Assistant's MQTT discovery needs (or this project promises) per component, besides the common ones.
REQUIRED = {
    "binary_sensor": {"state_topic", "value_template", "device_class", "payload_on", "payload_off"},
    "sensor": {"state_topic", "value_template"},
    "image": {"image_topic", "content_type"},
    "button": {"command_topic"},
    "number": {"command_topic", "command_template", "state_topic", "value_template", "min", "max", "step"},
}
COMMON = {"name", "unique_id", "availability_topic", "payload_available", "payload_not_available", "device"}
CONFIG_TOPIC = re.compile(r"homeassistant/(\w+)/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_-]+)/config")


def render(template: str, payload: bytes | None = None, **variables) -> str:
    """As Home Assistant does: ``value`` is the payload's text, ``value_json`` the payload parsed."""
    if payload is not None:
        variables.update(value=payload.decode(), value_json=json.loads(payload))
    return jinja2.Environment().from_string(template).render(**variables)


def configs_on(sub: Subscriber) -> dict[str, dict]:
    """The latest non-empty config per topic."""
    out: dict[str, dict] = {}
    for m in list(sub.messages):
        if m.topic.endswith("/config"):
            if m.payload:
                out[m.topic] = json.loads(m.payload)
            else:
                out.pop(m.topic, None)
    return out


def press(sub: Subscriber, topic: str, payload: str, result: str, timeout: float = 60) -> dict:
    """Publish as Home Assistant does (no request id) and return the next reply on ``result``."""
    before = len(sub.json_on(result))
    sub.client.publish(topic, payload, qos=1)
    assert wait_until(lambda: len(sub.json_on(result)) > before, timeout), f"no reply on {result}"
    return sub.json_on(result)[before]


def entity(configs: dict[str, dict], component: str, field: str) -> dict:
    """The one entity of ``component`` whose template or command topic names ``field``."""
    found = [c for t, c in configs.items() if t.split("/")[1] == component
             and (f"value_json.{field}" in c.get("value_template", "") or c.get("command_topic", "").endswith(field))]
    assert len(found) == 1, (component, field, found)
    return found[0]


def test_discovered_entities_read_the_agent_and_their_commands_work(tmp_path, broker, subscriber, real_set):
    rig = Rig(tmp_path, broker, real_set)
    ha = Subscriber(broker, base=HA)
    try:
        agent = rig.start(homeassistant={"enabled": True})
        first = command(subscriber, "retrain", {"folder": str(rig.good_folder(5)), "n_images": 5}, "r1")
        assert first["ok"], first
        assert wait_until(lambda: retained_state(subscriber)["status"] == "running", 20)
        state = retained_state(subscriber)
        assert wait_until(lambda: len(configs_on(ha)) == 9 and all(
            state["detector"] in c["device"]["model"] for c in configs_on(ha).values()), 20), configs_on(ha)
        configs = configs_on(ha)

        # Every payload: the right topic, the keys Home Assistant needs, one device, the agent's availability.
        node = DEVICE
        for topic, config in configs.items():
            match = CONFIG_TOPIC.fullmatch(topic)
            assert match and match.group(2) == node, topic
            component = match.group(1)
            missing = (REQUIRED[component] | COMMON) - set(config)
            assert not missing, (topic, missing)
            assert config["availability_topic"] == f"{BASE}/availability"
            assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
            device = config["device"]
            assert (device["model_id"], device["sw_version"]) == (state["model_id"], state["version"])
            assert "token" not in json.dumps(config)
        assert len({json.dumps(c["device"]["identifiers"]) for c in configs.values()}) == 1
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        assert subscriber.on("availability")[-1].payload == b"online"

        problem = entity(configs, "binary_sensor", "verdict")
        assert problem["device_class"] == "problem"
        score, threshold = entity(configs, "sensor", "score"), entity(configs, "sensor", "threshold")
        rate, status = entity(configs, "sensor", "reject_rate"), entity(configs, "sensor", "status")
        retrain, rollback = entity(configs, "button", "retrain"), entity(configs, "button", "rollback")
        sensitivity = entity(configs, "number", "threshold")
        image = next(c for t, c in configs.items() if t.split("/")[1] == "image")
        assert image["content_type"] == "image/jpeg"

        # Real parts: each state and image topic is one the agent really publishes on.
        rig.drop(real_set.test_good[:2], "good")
        bad = rig.drop(real_set.defects[:2], "bad")
        assert wait_until(lambda: len(subscriber.verdict_seqs()) >= 4 and subscriber.on("alert/image"), 30)
        assert wait_until(lambda: retained_state(subscriber)["inspected"] >= 4, 20)
        published = {m.topic for m in subscriber.messages}
        for config in configs.values():
            for key in ("state_topic", "image_topic", "availability_topic"):
                if key in config:
                    assert config[key] in published, (key, config[key])

        # The templates give Home Assistant the agent's values.
        verdicts = {json.loads(m.payload)["frame"]: m.payload for m in subscriber.on("verdict")}
        state_payload = subscriber.on("state")[-1].payload
        state = json.loads(state_payload)
        anomalous = verdicts[bad[0]]
        assert json.loads(anomalous)["verdict"] == "anomalous"
        assert render(problem["value_template"], anomalous) == problem["payload_on"]
        good = next(p for p in verdicts.values() if json.loads(p)["verdict"] == "good")
        assert render(problem["value_template"], good) == problem["payload_off"]
        assert float(render(score["value_template"], anomalous)) == json.loads(anomalous)["score"]
        assert float(render(threshold["value_template"], state_payload)) == state["threshold"]
        assert float(render(rate["value_template"], state_payload)) == pytest.approx(state["reject_rate"] * 100)
        assert render(status["value_template"], state_payload) == "running"
        assert float(render(sensitivity["value_template"], state_payload)) == state["sensitivity"]

        # Home Assistant's default button payload retrains on the next frames...
        assert retrain.get("payload_press", HA_DEFAULT_PRESS) == HA_DEFAULT_PRESS
        before = len(subscriber.json_on("cmd/retrain/result"))
        subscriber.client.publish(retrain["command_topic"], HA_DEFAULT_PRESS, qos=1)
        assert wait_until(lambda: retained_state(subscriber)["status"] == "retraining", 20)
        rig.drop(real_set.train_good[5:8], "retrain")
        assert wait_until(lambda: len(subscriber.json_on("cmd/retrain/result")) > before, 60)
        pressed = subscriber.json_on("cmd/retrain/result")[before]
        assert pressed["ok"] and pressed["result"]["n_train"] == 3, pressed
        assert wait_until(lambda: retained_state(subscriber)["n_train"] == 3, 20)
        assert retained_state(subscriber)["detector_file"] != state["detector_file"]

        # ...the rollback button goes back to the folder's fit...
        back = press(subscriber, rollback["command_topic"], rollback.get("payload_press", HA_DEFAULT_PRESS),
                     "cmd/rollback/result")
        assert back["ok"], back
        assert wait_until(lambda: retained_state(subscriber)["detector_file"] == state["detector_file"], 20)

        # ...and the slider's template sets the sensitivity.
        moved = press(subscriber, sensitivity["command_topic"], render(sensitivity["command_template"], value=0.8),
                      "cmd/threshold/result")
        assert moved["ok"], moved
        assert wait_until(lambda: retained_state(subscriber)["sensitivity"] == 0.8, 20)
        assert float(render(sensitivity["value_template"], subscriber.on("state")[-1].payload)) == 0.8

        # Other garbage is still refused.
        refused = press(subscriber, f"{BASE}/cmd/status", "PRES", "cmd/status/result", timeout=10)
        assert not refused["ok"] and refused["error"].startswith("payload is not JSON"), refused

        # Home Assistant restarted: its birth message brings every config again.
        counts = {t: len([m for m in ha.messages if m.topic == t]) for t in configs}
        ha.client.publish(f"{HA}/status", "online", qos=1)
        assert wait_until(lambda: all(len([m for m in ha.messages if m.topic == t]) > n for t, n in counts.items()), 10)

        # Turned off: the next start empties every retained config once, and forgets them.
        record = rig.tmp / "state" / RECORD_FILE
        assert set(json.loads(record.read_text())["topics"]) == set(configs)
        rig.stop(agent)
        rig.start()
        assert wait_until(lambda: not configs_on(ha), 20), configs_on(ha)
        assert wait_until(lambda: not record.exists(), 10)
        fresh = Subscriber(broker, base=HA)
        try:
            ha.client.publish(f"{HA}/marker", "after the retained ones", qos=1)
            assert wait_until(lambda: any(m.topic == f"{HA}/marker" for m in fresh.messages), 10)
            assert not [m.topic for m in fresh.messages if m.topic.endswith("/config")]
        finally:
            fresh.close()
    finally:
        ha.close()
        for running, thread in rig.running:
            running.stop()
            thread.join(20)


def test_entities_are_taken_back_only_once_the_broker_has_the_removal(tmp_path, broker):
    """Broker down at the start with [homeassistant] off: the record stays until the empty configs are acknowledged."""
    topics = Topics(PREFIX, DEVICE)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    on = Publisher(settings_for(broker), DEVICE, Spool(state_dir / "spool.sqlite3"),
                   discovery=Discovery(HA, topics, DEVICE, state_dir))
    started(on)
    on.publish_state({"model_id": "m", "version": "v", "detector": "d"})
    ha = Subscriber(broker, base=HA)
    try:
        assert wait_until(lambda: len(configs_on(ha)) == 9, 10)
        close_publishers(on)
        broker.stop()
        off = Publisher(settings_for(broker), DEVICE, Spool(state_dir / "spool.sqlite3"),
                        discovery=Discovery(None, topics, DEVICE, state_dir))
        off.start()
        record = state_dir / RECORD_FILE
        assert not wait_until(lambda: not record.exists(), 1.0)  # nothing acknowledged: still remembered
        broker.start()
        assert wait_until(lambda: off.connected, 10)
        assert wait_until(lambda: not record.exists(), 10)
        assert wait_until(lambda: not configs_on(ha), 10), configs_on(ha)
        close_publishers(off)
    finally:
        ha.close()
