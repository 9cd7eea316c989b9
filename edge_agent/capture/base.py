"""The frame source interface: ``open()``, ``read() -> Frame``, ``close()``.

Why so small: each camera API differs in how it opens and what it hands back; the agent only needs RGB
frames with a timestamp and a name it can put in a verdict, and to know when a source failed (reopen it)
or ended (a folder with nothing more to give). Two optional methods have defaults that suit a folder:
``read_after`` (trigger mode: a frame exposed after the trigger) and ``describe`` (what the state shows).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SourceError(RuntimeError):
    """The source failed (unplugged, stream dropped, unreadable file): worth reopening."""


class EndOfStream(Exception):
    """A finite source (folder without watch, video file) has no more frames."""


@dataclass
class Frame:
    image: np.ndarray  # RGB uint8, HxWx3 (or HxW grayscale)
    name: str  # file name, or "<source>#<counter>"
    captured_at: float = field(default_factory=time.time)  # epoch seconds
    # The same view already at the model's input size (a Pi camera's lores stream, scaled by the ISP), so the
    # agent can skip its resize; None: resize ``image``.
    model_image: np.ndarray | None = None


class FrameSource(ABC):
    name: str = "source"

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or stream; raises SourceError when it cannot."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or ``None`` when none is ready yet (so the caller's loop stays alive: the systemd
        watchdog is fed from it); raises SourceError on failure, EndOfStream when a finite source is done."""

    def read_after(self, since: float) -> Frame | None:
        """Like ``read``, but a frame whose exposure began at or after ``since`` (a ``time.monotonic()`` value):
        in trigger mode the part in front of the camera at the trigger, not a frame the camera had queued before
        it. This default suits a source whose frames are not live (a folder, a video file)."""
        return self.read()

    def describe(self) -> dict[str, Any]:
        """What the source opened with and how the camera is set (controls applied and ignored), for the state;
        plain JSON values. Empty when there is nothing beyond the name to say."""
        return {}

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
