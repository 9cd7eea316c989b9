"""Build the source the configuration names."""

from __future__ import annotations

from pathlib import Path

from edge_agent.config import CameraConfig, SourceConfig
from edge_agent.capture.base import FrameSource
from edge_agent.capture.controls import opencv_properties, picamera2_controls


def open_source(config: SourceConfig, state_dir: Path | None = None, camera: CameraConfig | None = None,
                model_size: tuple[int, int] | None = None) -> FrameSource:
    """An unopened source; picamera2 and OpenCV devices are touched only by ``open()``.

    A watched folder keeps its cursor in ``state_dir`` so that a restart does not judge old files again.
    ``camera``: the ``[camera]`` controls (None: the camera's own behaviour). ``model_size``: the model's input
    (width, height), which a Pi 5 camera can deliver as a second stream so that the agent skips its resize; not
    with a ROI, which crops the full frame before the model sees it.
    """
    camera = camera or CameraConfig()
    if config.kind == "folder":
        from edge_agent.capture.folder import FolderSource

        cursor = state_dir / "folder_cursor" if state_dir is not None and config.watch else None
        return FolderSource(config.path, watch=config.watch, loop=config.loop, cursor_file=cursor,
                            max_pixels=config.max_pixels)
    if config.kind == "opencv":
        from edge_agent.capture.opencv import OpenCVSource

        return OpenCVSource(config.uri, config.width, config.height, opencv_properties(camera))
    if config.kind == "picamera2":
        from edge_agent.capture.picamera import PiCameraSource

        return PiCameraSource(config.width, config.height, config.camera_num, picamera2_controls(camera),
                              None if config.roi else model_size)
    raise ValueError(f"unknown source kind {config.kind!r}")
