"""End to end "no verdict lost": the agent's publisher, a real mosquitto, and a subscriber that goes away.

The agent's spool stops at the broker's PUBACK; from there on, a subscriber that is offline gets its verdicts
only if the broker keeps them for it. That takes three things (docs/deployment.md, "Broker settings for no lost
verdicts"): broker persistence (or a restart forgets the session and its queue), a persistent session on the
subscriber (fixed client id, ``clean_session=False`` / MQTT 5 ``clean_start=False`` with a session expiry, QoS 1
subscription), and a per-client queue limit above the longest outage (Mosquitto's default is 1000 messages).

Each scenario: the subscriber subscribes and goes offline (its process ends), the agent publishes N > 1000
verdicts, the broker restarts, and the subscriber comes back with the same client id. With the settings of
``systemd/mosquitto.conf`` it receives all N exactly once after removing duplicates by ``(epoch, seq)``; with
Mosquitto's defaults it does not, which is why the settings are documented.
"""

from __future__ import annotations

import getpass
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import Spool
from tests.mqtt_broker import (DEVICE, MOSQUITTO_PASSWD, MosquittoBroker, close_publishers, free_port, require_mosquitto,
                               settings_for, shipped_conf, started, wait_until)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONF = ROOT / "systemd" / "mosquitto.conf"
PREFIX = "e2e"
BASE = f"{PREFIX}/{DEVICE}"
#: More than Mosquitto's default max_queued_messages (1000).
N = 1500
#: Options of the shipped file that belong to the site (paths, listener, access control, logging): the tests
#: replace them with their own; every other line of the file is applied as it is.
SITE_KEYS = {"pid_file", "persistence_location", "listener", "allow_anonymous", "password_file", "acl_file",
             "cafile", "certfile", "keyfile", "log_dest", "log_type", "user", "include_dir"}
#: Mosquitto's own defaults for the settings that matter here (persistence is off unless configured).
UPSTREAM_DEFAULTS = ["persistence false", "max_queued_messages 1000", "autosave_interval 1800"]
#: Debian's packaged /etc/mosquitto/mosquitto.conf turns persistence on but keeps the 1000-message queue.
DEBIAN_DEFAULTS = ["persistence true", "max_queued_messages 1000", "autosave_interval 1800"]


def shipped_settings() -> dict[str, str]:
    return {key: value for key, _, value in (line.partition(" ") for line in shipped_conf(SHIPPED_CONF))}


def shipped_delivery_conf() -> list[str]:
    """The shipped file's lines without the site-specific ones (``SITE_KEYS``)."""
    return [line for line in shipped_conf(SHIPPED_CONF) if line.split()[0] not in SITE_KEYS]


class SessionSubscriber:
    """A dashboard as docs/deployment.md tells it to connect: fixed client id, persistent session, QoS 1.
    ``persistent=False`` is the usual mistake: ``clean_session=True`` (MQTT 3.1.1) or no session expiry (MQTT 5).

    One instance is one run of the dashboard's process; a new instance with the same client id is the process
    started again. Received verdicts are kept as ``(epoch, seq)`` in arrival order, duplicates included.
    """

    def __init__(self, broker: MosquittoBroker, client_id: str, mqtt5: bool, persistent: bool = True):
        self.keys: list[tuple[str, int]] = []
        self.session_present: bool | None = None
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        if mqtt5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        if mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            if persistent:  # without it (expiry 0) the session ends at disconnect, even with clean_start=False
                properties.SessionExpiryInterval = 24 * 3600
            # clean_start=False on every connect: paho's default (clean at the first connect only) would throw the
            # queue away each time the dashboard's process starts.
            self.client.connect(broker.host, broker.port, keepalive=5, clean_start=False, properties=properties)
        else:
            self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscriber could not subscribe"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason_code: Any,
                    properties: Any) -> None:
        self.session_present = flags.session_present
        client.subscribe(f"{BASE}/verdict", qos=1)  # again on every connect: harmless when the session exists

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        verdict = json.loads(message.payload)
        with self._lock:
            self.keys.append((verdict["epoch"], verdict["seq"]))

    def received(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.keys)

    def wait_until_quiet(self, want: int, quiet_s: float = 0.5, timeout: float = 20.0) -> list[tuple[str, int]]:
        """Wait for ``want`` distinct verdicts, or until none arrived for ``quiet_s``; return all received."""
        deadline = time.monotonic() + timeout
        count, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.received()
            if len(set(now)) >= want:
                break
            if len(now) != count:
                count, since = len(now), time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.02)
        return self.received()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Publisher] = []

    def make(broker: MosquittoBroker) -> Publisher:
        made.append(Publisher(settings_for(broker, topic_prefix=PREFIX), DEVICE,
                              Spool(tmp_path / f"spool{len(made)}.sqlite3")))
        return started(made[-1])

    yield make
    close_publishers(*made)


def outage_through_restart(broker: MosquittoBroker, pub: Publisher, mqtt5: bool, n: int = N,
                           persistent: bool = True, crash: bool = False,
                           ) -> tuple[SessionSubscriber, list[tuple[str, int]]]:
    """Subscribe, go offline, let the agent publish ``n`` verdicts, restart the broker, come back; return the
    subscriber's second run and what it received. ``crash``: SIGKILL the broker after its next autosave instead
    of stopping it with SIGTERM."""
    client_id = f"dashboard-{'v5' if mqtt5 else 'v311'}"
    first = SessionSubscriber(broker, client_id, mqtt5, persistent)
    assert first.session_present is False
    first.close()  # the dashboard's process ends
    for i in range(n):
        pub.publish_verdict({"i": i})
    # The spool is empty once the broker has acknowledged (PUBACK) every verdict: from here on it is the broker's.
    assert wait_until(lambda: len(pub.spool) == 0, 30), f"{len(pub.spool)} verdicts still spooled"
    if crash:
        # Mosquitto logs this line when a save starts; the save after the PUBACKs is on disk once the next starts
        # (one thread saves them in turn). Killing at the first line could cut that save short: flaky, not a loss.
        saves = broker.log().count("Saving in-memory database")
        assert wait_until(lambda: broker.log().count("Saving in-memory database") > saves + 1, 8), "no autosave"
        proc = broker._proc  # the helper has no crash(); SIGKILL its process: no save at exit
        assert proc is not None
        proc.kill()
        proc.wait(5)
        broker.start()
    else:
        broker.restart()
    again = SessionSubscriber(broker, client_id, mqtt5, persistent)
    return again, again.wait_until_quiet(n)


@pytest.mark.parametrize("mqtt5", [False, True], ids=["mqtt311-clean_session-false", "mqtt5-clean_start-false"])
def test_documented_settings_deliver_every_verdict_through_an_outage_and_a_restart(
        tmp_path: Path, publisher_factory: Any, mqtt5: bool) -> None:
    broker = MosquittoBroker(tmp_path / "broker", extra_conf=shipped_delivery_conf())
    broker.start()
    try:
        pub = publisher_factory(broker)
        sub, received = outage_through_restart(broker, pub, mqtt5)
        try:
            assert sub.session_present is True, "the broker forgot the session across its restart"
            expected = {(pub.spool.epoch, seq) for seq in range(1, N + 1)}
            assert set(received) == expected, (
                f"got {len(set(received))} of {N} verdicts; missing e.g. {sorted(expected - set(received))[:5]}")
            assert [seq for _, seq in dict.fromkeys(received)] == list(range(1, N + 1)), "not in order"
        finally:
            sub.close()
    finally:
        broker.stop()


def test_broker_crash_after_an_autosave_loses_nothing(tmp_path: Path, publisher_factory: Any) -> None:
    """A crash (SIGKILL, power cut) keeps what the last autosave wrote: here autosave_interval is 1 s instead of
    the shipped 60 s, so the test need not wait; on a site the window is at most autosave_interval."""
    conf = [line for line in shipped_delivery_conf() if not line.startswith("autosave_interval")]
    broker = MosquittoBroker(tmp_path / "broker", extra_conf=[*conf, "autosave_interval 1"])
    broker.start()
    try:
        pub = publisher_factory(broker)
        sub, received = outage_through_restart(broker, pub, mqtt5=False, crash=True)
        try:
            assert sub.session_present is True
            assert set(received) == {(pub.spool.epoch, seq) for seq in range(1, N + 1)}
        finally:
            sub.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("mqtt5", [False, True], ids=["mqtt311-clean_session-true", "mqtt5-no-session-expiry"])
def test_subscriber_without_a_persistent_session_gets_nothing_sent_while_offline(
        tmp_path: Path, publisher_factory: Any, mqtt5: bool) -> None:
    """The documented broker cannot keep verdicts for a subscriber whose session ends when it disconnects."""
    broker = MosquittoBroker(tmp_path / "broker", extra_conf=shipped_delivery_conf())
    broker.start()
    try:
        pub = publisher_factory(broker)
        sub, received = outage_through_restart(broker, pub, mqtt5, n=200, persistent=False)
        try:
            assert sub.session_present is False and received == []
        finally:
            sub.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("defaults", [UPSTREAM_DEFAULTS, DEBIAN_DEFAULTS], ids=["upstream", "debian-package"])
def test_mosquitto_defaults_lose_verdicts(tmp_path: Path, publisher_factory: Any, defaults: list[str]) -> None:
    """Why the settings matter: the same outage against Mosquitto's defaults delivers fewer than N verdicts.

    Upstream (no persistence) the restart forgets the session and its queue; Debian's package persists, but the
    1000-message queue limit drops what the offline subscriber would have got after the first 1000.
    """
    broker = MosquittoBroker(tmp_path / "broker", extra_conf=defaults)
    broker.start()
    try:
        pub = publisher_factory(broker)
        sub, received = outage_through_restart(broker, pub, mqtt5=False)
        try:
            got = len(set(received))
            assert got < N
            if defaults is UPSTREAM_DEFAULTS:
                assert sub.session_present is False and got == 0
            else:
                assert sub.session_present is True and 0 < got <= 1000
        finally:
            sub.close()
    finally:
        broker.stop()


def test_shipped_config_has_the_documented_settings() -> None:
    settings = shipped_settings()
    assert settings["persistence"] == "true"
    assert settings["persistence_location"]
    assert int(settings["autosave_interval"]) <= 300
    queued = int(settings["max_queued_messages"])
    assert queued == 0 or queued >= 100000, "size the queue for the longest outage, not Mosquitto's 1000"
    assert settings["queue_qos0_messages"] == "false"
    assert "include_dir" not in settings  # a drop-in repeating persistence_location would stop the broker
    guide = (ROOT / "docs" / "deployment.md").read_text()
    assert re.search(r"^## (\d+\. )?Broker settings for no lost verdicts$", guide, re.M)
    for key in ("persistence", "persistence_location", "autosave_interval", "max_queued_messages",
                "max_queued_bytes", "queue_qos0_messages", "clean_session", "clean_start"):
        assert key in guide, f"docs/deployment.md does not mention {key}"


def test_shipped_config_starts_mosquitto_unchanged_but_for_paths(tmp_path: Path) -> None:
    """The whole file, access control included, is a valid mosquitto configuration (paths moved to tmp_path)."""
    binary = require_mosquitto()
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed")
    port = free_port()
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(passwd), "viewer", "secret"], check=True, timeout=10)
    acl.write_text("user viewer\ntopic read edge-inspect/#\n")
    (tmp_path / "data").mkdir()
    text = SHIPPED_CONF.read_text()
    for old, new in {"/run/mosquitto/mosquitto.pid": str(tmp_path / "mosquitto.pid"),
                     "/var/lib/mosquitto/": f"{tmp_path}/data/", "/etc/mosquitto/passwd": str(passwd),
                     "/etc/mosquitto/acl": str(acl), "/var/log/mosquitto/mosquitto.log": str(tmp_path / "log"),
                     "\nlistener 1883\n": f"\nlistener {port} 127.0.0.1\n"}.items():
        assert old in text, f"{old!r} is not in {SHIPPED_CONF}"
        text = text.replace(old, new)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text + f"user {getpass.getuser()}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(lambda: listening() or proc.poll() is not None, 5) and proc.poll() is None, (
            f"mosquitto did not start with {SHIPPED_CONF}: {proc.stderr.read().decode() if proc.stderr else ''}"
            f"{(tmp_path / 'log').read_text() if (tmp_path / 'log').exists() else ''}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
    assert (tmp_path / "data" / "mosquitto.db").exists(), "no persistence file written at SIGTERM"
