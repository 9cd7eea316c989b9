"""Keep a source alive: reopen it with exponential backoff and report each change of status.

Why: a USB camera that is unplugged for a moment or an RTSP stream that drops must not end an agent that
runs unattended; the failure must still be visible (the ``on_status`` callback goes to MQTT and the log).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from edge_agent.sources.base import EndOfStream, Frame, FrameSource, SourceError

log = logging.getLogger(__name__)


class ReopeningSource(FrameSource):
    def __init__(self, inner: FrameSource, min_s: float = 1.0, max_s: float = 30.0,
                 on_status: Callable[[dict], None] | None = None, stop: threading.Event | None = None) -> None:
        self.inner, self.min_s, self.max_s = inner, min_s, max_s
        self.name = inner.name
        self.on_status = on_status or (lambda status: None)
        self.stop = stop or threading.Event()
        self._open = False
        self.failures = 0

    def open(self) -> None:
        delay = self.min_s
        while not self.stop.is_set():
            try:
                self.inner.open()
            except SourceError as exc:
                self.failures += 1
                log.warning("%s: %s; retrying in %.1f s", self.name, exc, delay)
                self.on_status({"source": self.name, "status": "failed", "error": str(exc), "retry_in_s": delay})
                self.stop.wait(delay)
                delay = min(delay * 2, self.max_s)
                continue
            self._open = True
            self.on_status({"source": self.name, "status": "open"})
            return
        raise EndOfStream("stopped")

    def read(self) -> Frame:
        while True:
            if not self._open:
                self.open()
            try:
                return self.inner.read()
            except SourceError as exc:
                log.warning("%s: %s; reopening", self.name, exc)
                self.on_status({"source": self.name, "status": "failed", "error": str(exc)})
                self.inner.close()
                self._open = False

    def close(self) -> None:
        self.inner.close()
        self._open = False
