"""The Raspberry Pi camera through picamera2 (installed from apt on Raspberry Pi OS; imported only here)."""

from __future__ import annotations

import cv2

from edge_agent.capture.base import Frame, FrameSource, SourceError


class PiCameraSource(FrameSource):
    name = "picamera2"

    def __init__(self, width: int = 0, height: int = 0) -> None:
        self.size = (width, height) if width else (1280, 960)
        self._camera = None
        self._count = 0

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError(
                f"picamera2 is not importable ({exc}): on Raspberry Pi OS run 'sudo apt install python3-picamera2' "
                "and create the virtual environment with --system-site-packages"
            ) from None
        self.close()
        try:
            camera = Picamera2()
            # "RGB888" is stored B, G, R in memory (libcamera's naming), converted below.
            camera.configure(camera.create_still_configuration(main={"size": self.size, "format": "RGB888"}))
            camera.start()
        except Exception as exc:  # libcamera raises RuntimeError/IndexError when no camera is attached
            raise SourceError(f"cannot start the Pi camera: {exc}") from None
        self._camera = camera

    def read(self) -> Frame:
        if self._camera is None:
            raise SourceError("Pi camera is not open")
        try:
            bgr = self._camera.capture_array("main")
        except Exception as exc:
            raise SourceError(f"Pi camera capture failed: {exc}") from None
        self._count += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"picamera2#{self._count}")

    def close(self) -> None:
        if self._camera is not None:
            try:
                self._camera.stop()
                self._camera.close()
            finally:
                self._camera = None
