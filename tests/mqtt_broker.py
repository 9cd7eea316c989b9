"""A real mosquitto broker for tests: loopback only, a free port, its config and data under a temporary folder.

Tests of reconnects and outages need a broker that really goes away and comes back on the same port, which a
mock cannot show; so this starts ``mosquitto`` as a subprocess. Persistence is on (saved when the broker stops
with SIGTERM), so a test subscriber with a persistent session (``clean_session=False``) keeps its subscription
and its queued QoS 1 messages across ``restart()``, as on a real site where the dashboard is also a client.
"""

from __future__ import annotations

import getpass
import json
import threading
import uuid
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttConfig
from edge_agent.deliver.publisher import Publisher

MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")


def require_mosquitto() -> str:
    """Return the mosquitto binary, or skip the calling test with the reason."""
    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install mosquitto): MQTT tests need a real broker")
    return MOSQUITTO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Ask a server the tests started to stop with ``sig``, killing it if it has not within ``timeout``; True when
    it stopped on the signal (a server that had to be killed may have lost what it should have saved)."""
    if proc.poll() is not None:
        return True
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return False


class TlsFiles(NamedTuple):
    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (skips without openssl)."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, csr = folder / "ca.crt", folder / "ca.key", folder / "server.csr"
    files = TlsFiles(ca, folder / "server.crt", folder / "server.key")
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA"],
                 ["req", *ec, "-keyout", files.key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                 ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", files.cert,
                  "-days", "2", "-extfile", ext]):
        subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=30)
    return files


def shipped_conf(path: Path, replacements: dict[str, str] | None = None) -> list[str]:
    """The lines of a shipped mosquitto file (``systemd/``), comments dropped, with site-specific values replaced:
    a test runs the file users install, changing only addresses, paths and secrets, each of which must be there."""
    text = path.read_text()
    for old, new in (replacements or {}).items():
        assert old in text, f"{old!r} is not in {path}"
        text = text.replace(old, new)
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class MosquittoBroker:
    """One mosquitto process; ``stop()``/``start()`` keep the port, the config and the persistence file.

    ``users`` (name -> password) turns anonymous access off; ``tls`` makes the listener TLS-only.
    ``extra_conf`` lines are appended to the generated config: a later value of a numeric or boolean option
    (``persistence false``, ``max_queued_messages 1000``) overrides the one above it, while a second value of a
    string option (``persistence_location``, ``password_file``) is an error in mosquitto.
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: TlsFiles | None = None,
                 extra_conf: Sequence[str] = ()):
        self.binary = require_mosquitto()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"
        self.config_path = workdir / "mosquitto.conf"
        self._proc: subprocess.Popen[bytes] | None = None
        lines = [
            f"listener {self.port} {self.host}",
            # As root mosquitto would switch to the "mosquitto" user, who cannot write into pytest's tmp_path.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {workdir}/",
            "max_queued_messages 100000",
            f"log_dest file {self.log_path}",
            "log_type all",
        ]
        if tls:
            lines += [f"cafile {tls.ca}", f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if users:
            lines += ["allow_anonymous false", f"password_file {self._password_file(users)}"]
        else:
            lines.append("allow_anonymous true")
        lines += extra_conf
        self.config_path.write_text("\n".join(lines) + "\n")

    def _password_file(self, users: dict[str, str]) -> Path:
        if MOSQUITTO_PASSWD is None:
            pytest.skip("mosquitto_passwd is not installed: cannot test password authentication")
        path = self.workdir / "passwords"
        for i, (user, password) in enumerate(users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run([MOSQUITTO_PASSWD, "-b", *create, str(path), user, password], check=True, timeout=10)
        path.chmod(0o600)
        return path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start the broker and return once it accepts connections."""
        assert not self.running, "broker already running"
        self._proc = subprocess.Popen([self.binary, "-c", str(self.config_path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM: the broker saves its persistence file), killing it if it hangs."""
        if not self.running:
            return
        assert self._proc is not None
        stop_process(self._proc, timeout=timeout)
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


# ---- a subscriber that records everything, shared by the publisher and agent tests ----------------------

PREFIX = "test"
DEVICE = "cam1"
BASE = f"{PREFIX}/{DEVICE}"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Subscriber:
    """Records everything under ``test/cam1/#``; it also sends commands as an operator's tool would."""

    def __init__(self, broker: MosquittoBroker, username: str | None = None, password: str | None = None,
                 tls_ca: Path | None = None, base: str = BASE):
        self.base = base
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.base}/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=5)
        self.client.loop_start()
        assert self._subscribed.wait(5), "test subscriber could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, suffix: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == f"{self.base}/{suffix}"]

    def json_on(self, suffix: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.on(suffix)]

    def verdict_seqs(self) -> list[int]:
        """Sequence numbers in arrival order, duplicates removed (first arrival kept)."""
        seen: dict[int, None] = {}
        for v in self.json_on("verdict"):
            seen.setdefault(v["seq"], None)
        return list(seen)

    def wait_for_seqs(self, n: int, timeout: float = 10.0) -> list[int]:
        wait_until(lambda: len(self.verdict_seqs()) >= n, timeout)
        return self.verdict_seqs()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def settings_for(broker: MosquittoBroker, **overrides: Any) -> MqttConfig:
    """The agent's [mqtt] for a test broker, with a quick reconnect."""
    return MqttConfig(**{"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "keepalive": 5,
                         "reconnect_min_s": 0.05, "reconnect_max_s": 0.5, **overrides})


def started(pub: Publisher) -> Publisher:
    """Start a publisher as the agent does (online once running) and wait until it is connected."""
    pub.start()
    pub.publish_availability(True)
    assert wait_until(lambda: pub.connected, 5), "publisher did not connect"
    return pub


def close_publishers(*pubs: Publisher) -> None:
    for pub in pubs:
        pub.stop(timeout=1)
        pub.spool.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[Subscriber]:
    sub = Subscriber(broker)
    yield sub
    sub.close()
