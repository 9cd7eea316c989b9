"""The fleet's broker set-ups, run with the shipped files (docs/fleet.md): per-camera credentials under the ACL
(systemd/mosquitto-acl.example) and a site broker bridging to a central one (systemd/mosquitto-bridge.example).
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig
from edge_agent.deliver.messages import to_json
from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import Spool
from tests.fleet_rig import ROOT, camera_verdict, part_verdict, publish
from tests.mqtt_broker import (MosquittoBroker, Subscriber, close_publishers, make_tls_files, shipped_conf, started,
                               wait_until)

SHIPPED_ACL = ROOT / "systemd" / "mosquitto-acl.example"
SHIPPED_BRIDGE = ROOT / "systemd" / "mosquitto-bridge.example"
PREFIX = "edge-inspect"  # the prefix the shipped files name
PASSWORDS = {user: f"pw-{user}-{uuid.uuid4().hex[:6]}"
             for user in ("cam1", "cam2", "collector", "viewer", "operator", "site-bridge")}


def acl_broker(folder: Path, tls=None) -> MosquittoBroker:
    broker = MosquittoBroker(folder, users=PASSWORDS, tls=tls, extra_conf=[f"acl_file {SHIPPED_ACL}"])
    broker.start()
    return broker


def as_user(broker: MosquittoBroker, user: str, base: str, tls_ca: Path | None = None) -> Subscriber:
    return Subscriber(broker, user, PASSWORDS[user], tls_ca=tls_ca, base=base)


def verdict_payload(device: str, seq: int) -> bytes:
    return to_json(camera_verdict(device, "e1", seq))


class SharedSubscriber:
    """An MQTT 5 client in a shared subscription, as the collector subscribes."""

    def __init__(self, broker: MosquittoBroker, user: str, topic_filter: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.granted: list[bool] = []
        done = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"shared-{user}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic_filter, qos=1)

        def on_subscribe(c, u, mid, codes, p) -> None:
            self.granted = [not rc.is_failure for rc in codes]
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert done.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bridged_site(folder: Path, central: MosquittoBroker, central_ca: Path) -> MosquittoBroker:
    """A site broker running the shipped bridge file into ``central``."""
    site = MosquittoBroker(folder, extra_conf=shipped_conf(SHIPPED_BRIDGE, {
        "central.example.com:8883": f"{central.host}:{central.port}",
        "/etc/mosquitto/certs/central-ca.crt": str(central_ca),
        "CHANGE-ME": PASSWORDS["site-bridge"],
    }))
    site.start()
    return site


def test_a_camera_can_neither_publish_nor_read_another_cameras_topics(tmp_path: Path) -> None:
    broker = acl_broker(tmp_path / "broker")
    watchers = {d: as_user(broker, "viewer", f"{PREFIX}/{d}") for d in ("cam1", "cam2")}
    spy = as_user(broker, "cam1", f"{PREFIX}/cam2")  # cam1 trying to read everything of cam2
    own_commands = as_user(broker, "cam2", f"{PREFIX}/cam2/cmd")
    collector = SharedSubscriber(broker, "collector", f"$share/g/{PREFIX}/+/verdict")
    try:
        publish(broker, f"{PREFIX}/cam2/verdict", [verdict_payload("cam2", 666)], username="cam1",
                password=PASSWORDS["cam1"])  # forged: the broker acknowledges it and drops it
        publish(broker, f"{PREFIX}/cam1/verdict", [verdict_payload("cam1", 1)], username="cam1",
                password=PASSWORDS["cam1"])
        publish(broker, f"{PREFIX}/cam2/verdict", [verdict_payload("cam2", 1)], username="cam2",
                password=PASSWORDS["cam2"])
        publish(broker, f"{PREFIX}/cam2/cmd/status", [b"{}"], username="operator", password=PASSWORDS["operator"])
        # The collector may not command: its write is dropped like the forged verdict.
        publish(broker, f"{PREFIX}/cam2/cmd/rollback", [b"{}"], username="collector", password=PASSWORDS["collector"])
        assert wait_until(lambda: watchers["cam2"].on("cmd/status") and len(collector.messages) == 2, 5)
        time.sleep(0.5)
        assert watchers["cam1"].verdict_seqs() == [1]
        assert watchers["cam2"].verdict_seqs() == [1], "cam1's forged verdict reached a subscriber"
        assert spy.messages == [], [m.topic for m in spy.messages]
        assert [m.topic for m in own_commands.messages] == [f"{PREFIX}/cam2/cmd/status"]
        assert collector.granted == [True]
        assert sorted(m.topic for m in collector.messages) == [f"{PREFIX}/cam1/verdict", f"{PREFIX}/cam2/verdict"]
        assert broker.log().count("Denied PUBLISH") == 2  # the forged verdict and the collector's command
    finally:
        collector.close()
        for sub in (*watchers.values(), spy, own_commands):
            sub.close()
        broker.stop()


@pytest.fixture
def bridge(tmp_path: Path):
    """A central broker (TLS, passwords, the shipped ACL) and a site broker bridged to it by the shipped bridge
    file: (central, site, the CA file)."""
    tls = make_tls_files(tmp_path / "tls")
    central = acl_broker(tmp_path / "central", tls=tls)
    site = bridged_site(tmp_path / "site", central, tls.ca)
    yield central, site, tls.ca
    site.stop()
    central.stop()


def test_every_verdict_crosses_the_bridge_across_outages_of_the_link_and_the_site_broker(bridge,
                                                                                         tmp_path: Path) -> None:
    central, site, ca = bridge
    at_centre = as_user(central, "viewer", f"{PREFIX}/cam1", tls_ca=ca)
    settings = MqttConfig(host=site.host, port=site.port, topic_prefix=PREFIX, keepalive=5, reconnect_min_s=0.05,
                          reconnect_max_s=0.5)
    pub = started(Publisher(settings, "cam1", Spool(tmp_path / "spool.sqlite3")))
    seq = 0

    def send(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq = pub.publish_verdict(part_verdict("cam1", f"frame-{seq + 1}.png"))
            time.sleep(0.005)

    try:
        send(100)
        assert wait_until(lambda: len(at_centre.verdict_seqs()) >= 50, 20), central.log()
        central.stop()  # the link goes down mid-stream: the site broker queues for the bridge
        send(100)
        assert wait_until(lambda: pub.stats()["queued"] == 0, 10)  # all of it is in the site broker's queue
        site.stop()  # and the site broker restarts: its queue survives in its persistence file
        send(100)  # meanwhile the agent's spool holds these
        site.start()
        central.start()
        send(100)
        got = at_centre.wait_for_seqs(400, timeout=60)
        assert sorted(got) == list(range(1, 401)), (len(got), site.log()[-3000:])
        assert seq == 400
    finally:
        close_publishers(pub)
        at_centre.close()


def test_a_command_from_the_centre_reaches_the_camera_and_its_result_comes_back_once(bridge) -> None:
    """The bridge used to carry commands down but not their results up, although operators at the centre read them."""
    central, site, ca = bridge
    operator = as_user(central, "operator", f"{PREFIX}/cam1", tls_ca=ca)
    camera = Subscriber(site, base=f"{PREFIX}/cam1/cmd")  # what the camera's agent hears at its site broker
    try:
        # The bridge subscribes at the centre once it is connected; resend (numbered) until a command crosses.
        sent = iter(range(1000))
        assert wait_until(lambda: operator.client.publish(f"{PREFIX}/cam1/cmd/status", b'{"n": %d}' % next(sent),
                                                          qos=1) is not None
                          and wait_until(lambda: camera.on("status"), 1), 20), site.log()
        camera.client.publish(f"{PREFIX}/cam1/cmd/status/result", b'{"ok": true}', qos=1)
        assert wait_until(lambda: operator.on("cmd/status/result"), 10), site.log()
        time.sleep(1)  # a result crossing back and forth would show up as more than one copy
        assert len(operator.on("cmd/status/result")) == 1 and len(camera.on("status/result")) == 1
        heard = [m.payload for m in camera.on("status")]
        assert len(heard) == len(set(heard))  # no command crosses twice either
    finally:
        operator.close()
        camera.close()
