"""Build the source the configuration names."""

from __future__ import annotations

from edge_agent.config import SourceConfig
from edge_agent.sources.base import FrameSource


def open_source(config: SourceConfig) -> FrameSource:
    """An unopened source; picamera2 and OpenCV devices are touched only by ``open()``."""
    if config.kind == "folder":
        from edge_agent.sources.folder import FolderSource

        return FolderSource(config.path, watch=config.watch, loop=config.loop)
    if config.kind == "opencv":
        from edge_agent.sources.opencv import OpenCVSource

        return OpenCVSource(config.uri, config.width, config.height)
    if config.kind == "picamera2":
        from edge_agent.sources.picamera import PiCameraSource

        return PiCameraSource(config.width, config.height)
    raise ValueError(f"unknown source kind {config.kind!r}")
