"""A fleet on loopback: simulated cameras publishing real verdict payloads, and real ``edge-collector`` processes.

Shared by tests/test_collector.py and bench/collector.py. The cameras are paho clients publishing what
`edge_agent.deliver.messages.verdict_message` builds, with ``epoch`` and ``seq`` set as the agent's publisher sets
them, at QoS 1; the collectors are ``python -m collector`` subprocesses (the console script's module), so a test
can kill one with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.deliver.messages import to_json, verdict_message
from tests.mqtt_broker import MosquittoBroker, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]


def part_verdict(device: str, frame: str, anomalous: bool = False) -> dict:
    """A verdict as the agent's loop builds it, before the publisher numbers it."""
    return verdict_message(device, frame, time.time(), 0.9 if anomalous else 0.1, 0.5, anomalous,
                           "efficientnet_lite0-int8", "1-x.edet", {"embed": 12.0})


def camera_verdict(device: str, epoch: str, seq: int, anomalous: bool = False) -> dict:
    """A verdict as it leaves a camera: numbered ``(epoch, seq)``."""
    return part_verdict(device, f"frame-{seq:06d}.png", anomalous) | {"epoch": epoch, "seq": seq}


def publish(broker: MosquittoBroker, topic: str, payloads: Sequence[bytes], pace_s: float = 0.0,
            username: str | None = None, password: str | None = None) -> None:
    """Publish at QoS 1 as one client and return when the broker has acknowledged every message."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cam-{uuid.uuid4().hex[:8]}")
    if username:
        client.username_pw_set(username, password)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        infos = []
        for payload in payloads:
            infos.append(client.publish(topic, payload, qos=1))
            if pace_s:
                time.sleep(pace_s)
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published(), f"the broker did not acknowledge a message on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()


def run_cameras(broker: MosquittoBroker, prefix: str, n_cameras: int, n_verdicts: int, pace_s: float = 0.0,
                anomalous_every: int = 10) -> list[tuple[str, str, int]]:
    """``n_cameras`` clients at once, each publishing ``n_verdicts`` verdicts; returns every (device, epoch, seq)."""
    sent: list[tuple[str, str, int]] = []
    threads, errors = [], []

    def camera(device: str) -> None:
        epoch = uuid.uuid4().hex[:16]
        payloads = [to_json(camera_verdict(device, epoch, seq, seq % anomalous_every == 0))
                    for seq in range(1, n_verdicts + 1)]
        try:
            publish(broker, f"{prefix}/{device}/verdict", payloads, pace_s)
        except Exception as exc:  # reported by the caller
            errors.append(f"{device}: {exc!r}")
        sent.extend((device, epoch, seq) for seq in range(1, n_verdicts + 1))

    for i in range(n_cameras):
        threads.append(threading.Thread(target=camera, args=(f"cam{i:03d}",), daemon=True))
        threads[-1].start()
    for t in threads:
        t.join()
    assert not errors, errors
    return sent


class CollectorProcess:
    """``python -m collector`` with a fixed client id; ``kill()`` is SIGKILL, ``start()`` again resumes its session."""

    def __init__(self, broker: MosquittoBroker, dsn: str, prefix: str, client_id: str, folder: Path,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "collector", "--host", broker.host, "--port", str(broker.port),
                     "--prefix", prefix, "--client-id", client_id, *extra_args]
        self.env = {**os.environ, "EDGE_COLLECTOR_DSN": dsn, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{client_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def start(self, timeout: float = 20.0) -> None:
        """Start and return once the collector's subscriptions are granted."""
        self._starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(lambda: self.log().count("subscribed to") >= self._starts or self.proc.poll() is not None,
                          timeout), f"the collector did not subscribe:\n{self.log()}"
        assert self.proc.poll() is None, f"the collector exited with {self.proc.returncode}:\n{self.log()}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        if not stop_process(self.proc, timeout=15):
            raise AssertionError(f"the collector did not stop on SIGTERM:\n{self.log()}")
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
