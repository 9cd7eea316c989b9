"""Keep a source alive: reopen it with exponential backoff and report each change of status.

Why: a USB camera that is unplugged for a moment or an RTSP stream that drops must not end an agent that
runs unattended; the failure must still be visible (the ``on_status`` callback goes to MQTT and the log).
Why it never blocks for long: the agent's main loop feeds the systemd watchdog, so while the camera is away
``read`` returns ``None`` after a short wait instead of sleeping through the backoff; a camera missing for an
hour then means an hour of "source failed" on MQTT, not a restart loop that ends in a failed unit.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from edge_agent.capture.base import Frame, FrameSource, SourceError

log = logging.getLogger(__name__)

_MAX_WAIT_S = 0.5


class ReopeningSource(FrameSource):
    def __init__(self, inner: FrameSource, min_s: float = 1.0, max_s: float = 30.0,
                 on_status: Callable[[dict], None] | None = None, stop: threading.Event | None = None) -> None:
        self.inner, self.min_s, self.max_s = inner, min_s, max_s
        self.name = inner.name
        self.on_status = on_status or (lambda status: None)
        self.stop = stop or threading.Event()
        self._open = False
        self._delay = min_s
        self._next_try = 0.0
        self.failures = 0

    def _fail(self, exc: SourceError, action: str) -> None:
        self.failures += 1
        self._next_try = time.monotonic() + self._delay
        log.warning("%s: %s; %s in %.1f s", self.name, exc, action, self._delay)
        self.on_status({"source": self.name, "status": "failed", "error": str(exc), "retry_in_s": self._delay})
        self._delay = min(self._delay * 2, self.max_s)

    def open(self) -> None:
        """One attempt; on failure the next ``read`` calls retry on the backoff schedule."""
        try:
            self.inner.open()
        except SourceError as exc:
            self._fail(exc, "retrying")
            return
        self._open = True
        self.on_status({"source": self.name, "status": "open", **self.inner.describe()})

    def poll_open(self, block: bool = True) -> bool:
        """Retry opening when the backoff allows, without taking a frame; True when open. ``block``: while the
        backoff runs, wait a little (a loop with nothing else to do) rather than return at once (one that
        waits for triggers meanwhile)."""
        if not self._open:
            wait = self._next_try - time.monotonic()
            if wait > 0:
                if block:
                    self.stop.wait(min(wait, _MAX_WAIT_S))
                return False
            self.open()
        return self._open

    def read(self) -> Frame | None:
        return self._take(self.inner.read)

    def read_after(self, since: float) -> Frame | None:
        return self._take(lambda: self.inner.read_after(since))

    def _take(self, read: Callable[[], Frame | None]) -> Frame | None:
        if not self.poll_open():
            return None
        try:
            frame = read()
        except SourceError as exc:
            self.inner.close()
            self._open = False
            self._fail(exc, "reopening")
            return None
        if frame is not None:
            self._delay = self.min_s  # a camera that opens but gives no frame keeps backing off
        return frame

    @property
    def is_open(self) -> bool:
        return self._open

    def describe(self) -> dict[str, Any]:
        """The inner source's, while it is open: read live (a camera's settled exposure changes frame by frame)."""
        return self.inner.describe() if self._open else {}

    def close(self) -> None:
        self.inner.close()
        self._open = False
