"""OpenCV ``VideoCapture``: a USB camera by index, an RTSP/HTTP stream by URL, or a video file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2

from edge_agent.capture.base import EndOfStream, Frame, FrameSource, SourceError

log = logging.getLogger(__name__)

#: A ``grab()`` that returns within this took a frame the driver had already queued; a new one takes a frame period.
QUEUED_S = 0.005
#: The most queued frames a flush drops (V4L2 queues 4 by default), so a stream that never waits cannot spin.
MAX_QUEUED = 10


class OpenCVSource(FrameSource):
    def __init__(self, uri: str, width: int = 0, height: int = 0,
                 controls: tuple[list[tuple[str, float]], dict[str, str]] | None = None) -> None:
        """``controls``: `edge_agent.capture.controls.opencv_properties`' output, set at each open."""
        self.uri = int(uri) if uri.isdigit() else uri
        self.width, self.height = width, height
        self.name = f"opencv:{uri}"
        self.properties, self.unmapped = controls or ([], {})
        self._cap: cv2.VideoCapture | None = None
        self._count = 0
        self._report: dict[str, Any] = {}
        # Only a real video file ends; a camera by index or /dev path, a stream or a pipeline is reopened.
        self._is_file = isinstance(self.uri, str) and not self.uri.startswith("/dev/") and Path(self.uri).is_file()

    def open(self) -> None:
        self.close()
        cap = cv2.VideoCapture(self.uri)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.uri!r} with OpenCV")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self._apply_controls(cap)
        self._cap = cap

    def _apply_controls(self, cap: cv2.VideoCapture) -> None:
        """Set what maps; report what did not, logged at the first open only (a reopen would repeat it)."""
        if not self.properties and not self.unmapped:
            return
        applied, refused = {}, {}
        for prop, value in self.properties:
            if cap.set(getattr(cv2, prop), value):
                applied[prop] = value
            else:
                refused[prop] = f"set({value}) returned False: this back-end or device does not take it"
        ignored = {**self.unmapped, **refused}
        if ignored and not self._report:
            log.warning("%s: camera controls not applied: %s", self.name,
                        "; ".join(f"{k}: {why}" for k, why in ignored.items()))
        self._report = {"controls": applied, "ignored": ignored}

    def _require(self) -> cv2.VideoCapture:
        if self._cap is None:
            raise SourceError(f"{self.name} is not open")
        return self._cap

    def read(self) -> Frame:
        ok, bgr = self._require().read()
        if not ok or bgr is None:
            if self._is_file:
                raise EndOfStream(f"end of {self.uri}")
            raise SourceError(f"{self.name}: no frame (camera unplugged or stream dropped)")
        self._count += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.name}#{self._count}")

    def read_after(self, since: float) -> Frame:
        """OpenCV gives no exposure timestamps, so ``since`` cannot be checked: for a live camera this drops the
        frames the driver had queued (grabs that return at once) and the first one that had to be waited for
        (it may have begun exposing before the call), then takes the next. A file's frames are not live."""
        if not self._is_file:
            cap = self._require()
            for _ in range(MAX_QUEUED):
                start = time.monotonic()
                if not cap.grab() or time.monotonic() - start > QUEUED_S:
                    break
        return self.read()

    def describe(self) -> dict[str, Any]:
        return self._report

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
