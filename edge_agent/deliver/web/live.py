"""What the web page shows, as the loop hands it over: the latest frame, recent verdicts, the rejects, the retrain's
progress, the state and the pictures (`WebSink`).

Why a sink and not a view into the agent: the loop owns the agent's state and must never wait for a browser.
Every ``publish_*`` here runs on the loop and only swaps a reference or appends to a bounded deque under a lock
held for microseconds; the server's threads read copies. Nothing is queued per browser: a slow or absent browser
gets the latest of each thing when it asks, and what it missed is gone.

The frame is kept only while a browser has asked for one within `WATCH_S` (no browser: no frame held, one
reference at most otherwise). One thread (``web-encoder``) draws and encodes the latest frame as JPEG, at most
``live_fps`` times a second however many browsers watch; each browser takes the newest JPEG (`latest_jpeg`). One
thread, not each request's: the CPU cost is bounded, and the encoder's large buffers stay in one heap arena
instead of fragmenting one per connection thread (glibc gives each thread its own; docs/web.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_agent.deliver.messages import ANOMALOUS, GOOD
from edge_agent.deliver.sink import PartialSink
from edge_agent.deliver.snapshot import jpeg
from edge_agent.deliver.web.server import lower_thread_priority

log = logging.getLogger(__name__)

#: A frame is kept while a browser asked for one within this many seconds.
WATCH_S = 10.0
#: The live view's longer side, in pixels: enough for a phone or a panel, cheap to encode.
LIVE_SIDE = 640
#: The verdict fields the score chart and the gallery use (the rest stays on MQTT).
_VERDICT_FIELDS = ("seq", "frame", "captured_at", "score", "threshold", "verdict", "part_id", "detector_file")
_COLOURS = {GOOD: (40, 200, 60), ANOMALOUS: (230, 40, 40), None: (160, 160, 160)}

Box = Callable[[tuple[int, ...]], tuple[int, int, int, int] | None]


@dataclass(frozen=True)
class Reject:
    id: int
    alert: dict[str, Any]
    jpeg: bytes | None


class LiveState(PartialSink):
    """The sink half of the web page (`edge_agent.deliver.web.WebSink` adds the server)."""

    def __init__(self, history: int = 500, gallery: int = 24, box: Box | None = None, jpeg_quality: int = 80,
                 broker: Callable[[], dict[str, Any]] | None = None, live_fps: float = 4.0) -> None:
        self._box = box
        self._quality = jpeg_quality
        self.broker = broker  # the MQTT publisher's stats, for its connection; None: MQTT is off
        self.live_fps = live_fps
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)  # the loop handed over a frame (or stop)
        self._new_jpeg = threading.Condition(self._lock)  # the encoder made one
        self._frame: tuple[int, np.ndarray, dict[str, Any] | None] | None = None
        self._frame_id = 0
        self._watched_until = 0.0
        self._encoded: tuple[int, bytes] = (0, b"")
        self._encoder: threading.Thread | None = None
        self._stopping = False
        self._verdicts: deque[dict[str, Any]] = deque(maxlen=history)
        self._n_verdicts = 0
        self._rejects: deque[Reject] = deque(maxlen=gallery)
        self._n_rejects = 0
        self._progress: dict[str, Any] | None = None
        self._images: dict[str, tuple[int, bytes]] = {}
        self._n_images = 0
        self._state: dict[str, Any] = {}

    # ---- from the loop ----------------------------------------------------------------------------------------
    def publish_frame(self, image: np.ndarray, verdict: dict[str, Any] | None) -> None:
        if time.monotonic() > self._watched_until:
            self._frame = None  # nobody watches: hold no frame
            return
        with self._new_frame:
            self._frame_id += 1
            self._frame = (self._frame_id, image, verdict)
            self._new_frame.notify_all()

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        entry = {k: verdict[k] for k in _VERDICT_FIELDS if k in verdict}
        with self._lock:
            self._n_verdicts += 1
            entry["n"], entry["received_ms"] = self._n_verdicts, round(time.time() * 1e3)
            self._verdicts.append(entry)
        return verdict["seq"]

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        with self._lock:
            self._n_rejects += 1
            self._rejects.append(Reject(self._n_rejects, alert, image_jpeg))

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "retrain/progress":
            with self._lock:
                self._progress = payload

    def publish_state(self, state: dict[str, Any]) -> None:
        self._state = state

    def publish_image(self, name: str, image_jpeg: bytes) -> None:
        with self._lock:
            self._n_images += 1
            self._images[name] = (self._n_images, image_jpeg)

    # ---- for the server's threads -----------------------------------------------------------------------------
    def watch(self) -> None:
        """A browser wants frames: keep them for `WATCH_S`."""
        self._watched_until = time.monotonic() + WATCH_S

    def latest_jpeg(self, after: int, wait_s: float) -> tuple[int, bytes] | None:
        """The newest JPEG of a frame after frame ``after`` (its id and bytes), waiting up to ``wait_s`` for one;
        ``None`` if none came. Frames in between are skipped: a browser sees the line at its own pace."""
        self.watch()
        with self._new_jpeg:
            self._new_jpeg.wait_for(lambda: self._encoded[0] > after or self._stopping, wait_s)
            encoded = self._encoded
        return encoded if encoded[0] > after else None

    def start(self) -> None:
        if self._encoder is None:
            self._stopping = False
            self._encoder = threading.Thread(target=self._encode_frames, name="web-encoder", daemon=True)
            self._encoder.start()

    def stop(self, timeout: float = 5) -> None:
        with self._lock:
            self._stopping = True
            self._new_frame.notify_all()
            self._new_jpeg.notify_all()
        if self._encoder is not None:
            self._encoder.join(timeout)
            self._encoder = None

    def _encode_frames(self) -> None:
        lower_thread_priority()  # the heaviest work of the page (resize, drawing, JPEG): after the loop's
        period = 1.0 / self.live_fps
        while True:
            with self._new_frame:
                self._new_frame.wait_for(lambda: self._stopping or (
                    self._frame is not None and self._frame[0] > self._encoded[0]))
                if self._stopping:
                    return
                frame_id, image, verdict = self._frame
            started = time.monotonic()
            try:
                picture = self._draw(image, verdict)
            except Exception:  # a frame that cannot be drawn costs that frame, not the live view
                log.exception("web: live frame %d could not be encoded", frame_id)
                picture = None
            del image
            with self._new_jpeg:
                if picture is not None:
                    self._encoded = (frame_id, picture)
                    self._new_jpeg.notify_all()
            time.sleep(max(0.0, period - (time.monotonic() - started)))

    def _draw(self, image: np.ndarray, verdict: dict[str, Any] | None) -> bytes:
        """The frame shrunk to `LIVE_SIDE`, the region of interest boxed in the verdict's colour, the verdict and
        score written on it: what the operator needs to see at a glance from across the line."""
        h, w = image.shape[:2]
        scale = min(1.0, LIVE_SIDE / max(h, w))
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else image
        small = cv2.cvtColor(small, cv2.COLOR_GRAY2RGB) if small.ndim == 2 else small.copy()
        kind = verdict.get("verdict") if verdict else None
        colour = _COLOURS.get(kind, _COLOURS[None])
        box = self._box(image.shape) if self._box else None
        if box is not None:
            x, y, bw, bh = (round(v * scale) for v in box)
            cv2.rectangle(small, (x, y), (x + bw - 1, y + bh - 1), colour, 2)
        text = (f"{kind.upper()}  {verdict['score']:.3g} / {verdict['threshold']:.3g}  #{verdict.get('seq', '')}"
                if verdict else "no verdict (unfitted)")
        size = max(0.5, small.shape[1] / 640)  # legible on a phone: the picture is shown shrunk
        origin = (8, round(30 * size))
        cv2.putText(small, text, origin, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 5, cv2.LINE_AA)
        cv2.putText(small, text, origin, cv2.FONT_HERSHEY_SIMPLEX, size, colour, 2, cv2.LINE_AA)
        return jpeg(small, self._quality, LIVE_SIDE)

    def since(self, after: int) -> dict[str, Any]:
        """What a page polls: the verdicts after its last one (``n`` > ``after``), the rejects' list, the
        retrain's latest progress and the pictures' versions."""
        with self._lock:
            verdicts = [v for v in self._verdicts if v["n"] > after]
            rejects = [{"id": r.id, "image": r.jpeg is not None, **r.alert} for r in self._rejects]
            progress = self._progress
            images = {name: version for name, (version, _) in self._images.items()}
            last = self._n_verdicts
        return {"last": last, "verdicts": verdicts, "rejects": rejects, "progress": progress, "images": images}

    def progress(self) -> dict[str, Any] | None:
        """The retrain's latest ``retrain/progress`` event (collecting, fitting, done, failed)."""
        return self._progress

    def reject_jpeg(self, reject_id: int) -> bytes | None:
        with self._lock:
            return next((r.jpeg for r in self._rejects if r.id == reject_id), None)

    def image(self, name: str) -> bytes | None:
        """The latest picture of that name (``retrain/images``); ``None`` when there is none or it is empty."""
        with self._lock:
            entry = self._images.get(name)
        return entry[1] if entry and entry[1] else None

    def last_state(self) -> dict[str, Any]:
        return self._state
