"""The frame source interface: ``open()``, ``read() -> Frame``, ``close()``.

Why so small: each camera API differs in how it opens and what it hands back; the agent only needs RGB
frames with a timestamp and a name it can put in a verdict, and to know when a source failed (reopen it)
or ended (a folder with nothing more to give).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class SourceError(RuntimeError):
    """The source failed (unplugged, stream dropped, unreadable file): worth reopening."""


class EndOfStream(Exception):
    """A finite source (folder without watch, video file) has no more frames."""


@dataclass
class Frame:
    image: np.ndarray  # RGB uint8, HxWx3 (or HxW grayscale)
    name: str  # file name, or "<source>#<counter>"
    captured_at: float = field(default_factory=time.time)


class FrameSource(ABC):
    name: str = "source"

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or stream; raises SourceError when it cannot."""

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or ``None`` when none is ready yet (so the caller's loop stays alive: the systemd
        watchdog is fed from it); raises SourceError on failure, EndOfStream when a finite source is done."""

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
