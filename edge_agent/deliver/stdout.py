"""Verdicts as JSON lines on stdout, when MQTT is disabled.

Why: the demo and a bench run the agent with no broker; the agent code stays the same and the verdicts are still
visible (and machine-readable) instead of silently dropped.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from typing import Any, TextIO


class StdoutSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._seq = 0
        self.epoch = secrets.token_hex(8)  # numbering starts again with each process: a new epoch says so
        self._lock = threading.Lock()

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5) -> None:
        self.stream.flush()

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "dropped": 0, "connected": False}

    def write(self, topic: str, payload: dict[str, Any]) -> None:
        """One line ``{"topic": ..., **payload}``."""
        with self._lock:
            self.stream.write(json.dumps({"topic": topic, **payload}, default=float) + "\n")
            self.stream.flush()

    def publish_availability(self, online: bool) -> None:
        self.write("availability", {"online": online})

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        with self._lock:
            if "seq" not in verdict:
                self._seq += 1
                verdict.update(epoch=self.epoch, seq=self._seq)
        self.write("verdict", verdict)
        return verdict["seq"]

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        self.write("alert", {**alert, "image_bytes": len(image_jpeg) if image_jpeg else 0})

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        self.write(name, payload)

    def publish_state(self, state: dict[str, Any]) -> None:
        self.write("state", state)

    def publish_image(self, name: str, image_jpeg: bytes) -> None:
        self.write(name, {"image_bytes": len(image_jpeg)})

    def publish_frame(self, image: Any, verdict: dict[str, Any] | None) -> None:
        pass  # the verdict is already a line; frames are for a live view
