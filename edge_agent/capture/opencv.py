"""OpenCV ``VideoCapture``: a USB camera by index, an RTSP/HTTP stream by URL, or a video file."""

from __future__ import annotations

from pathlib import Path

import cv2

from edge_agent.capture.base import EndOfStream, Frame, FrameSource, SourceError


class OpenCVSource(FrameSource):
    def __init__(self, uri: str, width: int = 0, height: int = 0) -> None:
        self.uri = int(uri) if uri.isdigit() else uri
        self.width, self.height = width, height
        self.name = f"opencv:{uri}"
        self._cap: cv2.VideoCapture | None = None
        self._count = 0
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
        self._cap = cap

    def read(self) -> Frame:
        if self._cap is None:
            raise SourceError(f"{self.name} is not open")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self._is_file:
                raise EndOfStream(f"end of {self.uri}")
            raise SourceError(f"{self.name}: no frame (camera unplugged or stream dropped)")
        self._count += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.name}#{self._count}")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
