"""Where verdicts go when MQTT is disabled: JSON lines on stdout, same interface as the MQTT publisher.

Why: the demo and a bench test run the agent with no broker; the agent code stays the same and the verdicts
are still visible (and machine-readable) instead of silently dropped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


class StdoutPublisher:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._seq = 0
        self._lock = threading.Lock()
        self.on_command = None

    connected = False

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5) -> None:
        self.stream.flush()

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "dropped": 0, "connected": False}

    def _write(self, kind: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self.stream.write(json.dumps({"topic": kind, **payload}, default=float) + "\n")
            self.stream.flush()

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        with self._lock:
            self._seq += 1
            seq = self._seq
        self._write("verdict", {**verdict, "seq": seq})
        return seq

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        self._write("alert", {**alert, "image_bytes": len(image_jpeg) if image_jpeg else 0})

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        self._write(name, payload)

    def publish_state(self, state: dict[str, Any]) -> None:
        self._write("state", state)


class RecordingPublisher:
    """Wraps a publisher and keeps every verdict (the demo's summary; ``keep=False`` for long runs) and how long
    publishing it took (the benchmarks' publish cost); with ``echo`` the verdicts are also printed as JSON lines."""

    def __init__(self, inner: Any, echo: TextIO | None = None, keep: bool = True) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "echo", echo)
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "verdicts", [])
        object.__setattr__(self, "publish_ms", [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)  # e.g. on_command, set by the agent's builder

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        t0 = time.perf_counter()
        seq = self.inner.publish_verdict(verdict)
        self.publish_ms.append((time.perf_counter() - t0) * 1e3)
        if self.keep:
            self.verdicts.append({**verdict, "seq": seq})
        if self.echo is not None:
            self.echo.write(json.dumps({"topic": "verdict", **verdict, "seq": seq}, default=float) + "\n")
        return seq
