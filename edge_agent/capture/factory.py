"""Build the source the configuration names."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import SourceConfig
from edge_agent.capture.base import FrameSource


def open_source(config: SourceConfig, state_dir: Path | None = None) -> FrameSource:
    """An unopened source; picamera2 and OpenCV devices are touched only by ``open()``.

    A watched folder keeps its cursor in ``state_dir`` so that a restart does not judge old files again.
    """
    if config.kind == "folder":
        from edge_agent.capture.folder import FolderSource

        cursor = state_dir / "folder_cursor" if state_dir is not None and config.watch else None
        return FolderSource(config.path, watch=config.watch, loop=config.loop, cursor_file=cursor,
                            max_pixels=config.max_pixels)
    if config.kind == "opencv":
        from edge_agent.capture.opencv import OpenCVSource

        return OpenCVSource(config.uri, config.width, config.height)
    if config.kind == "picamera2":
        from edge_agent.capture.picamera import PiCameraSource

        return PiCameraSource(config.width, config.height)
    raise ValueError(f"unknown source kind {config.kind!r}")
