"""The region of interest: the part of the captured frame the detector sees, fitting included.

Why: the model sees 224 px or so. A part that fills a third of a 1280 x 960 frame would be seen at about 75 px
if the whole frame were shrunk, and a small defect would vanish. Cropping to the part first keeps its pixels.

``[source] roi = [x, y, width, height]`` in pixels of the captured frame, or as fractions of it when all four
values lie in [0, 1] (a region of one pixel is no use, so the two readings never collide). An empty list means
the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class RoiError(ValueError):
    """A region that is malformed or does not fit the frame."""


@dataclass(frozen=True)
class Roi:
    x: float
    y: float
    width: float
    height: float

    @classmethod
    def parse(cls, values: Sequence[float]) -> Roi | None:
        """``None`` for an empty list; `RoiError` naming what is wrong otherwise."""
        if len(values) == 0:
            return None
        if len(values) != 4:
            raise RoiError(f"give [x, y, width, height] (4 numbers), got {len(values)}")
        x, y, w, h = (float(v) for v in values)
        if min(x, y) < 0 or w <= 0 or h <= 0:
            raise RoiError(f"x and y must be >= 0 and width, height > 0, got {list(values)}")
        roi = cls(x, y, w, h)
        if roi.fractional and (x + w > 1 or y + h > 1):
            raise RoiError(f"as fractions of the frame, x + width and y + height must be <= 1, got {list(values)}")
        if not roi.fractional and not all(float(v).is_integer() for v in values):
            raise RoiError(f"in pixels, give whole numbers (or all four as fractions in [0, 1]), got {list(values)}")
        return roi

    @property
    def fractional(self) -> bool:
        return max(self.x, self.y, self.width, self.height) <= 1

    def as_list(self) -> list[float]:
        """The four numbers as the configuration gives them."""
        return [self.x, self.y, self.width, self.height]

    def box(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` in pixels of a frame of ``shape``; `RoiError` if it does not fit."""
        fh, fw = shape[:2]
        if self.fractional:
            x, y = round(self.x * fw), round(self.y * fh)
            w, h = max(1, round(self.width * fw)), max(1, round(self.height * fh))
            return x, y, min(w, fw - x), min(h, fh - y)
        x, y, w, h = (int(v) for v in self.as_list())
        if x + w > fw or y + h > fh:
            raise RoiError(f"[source] roi {self.as_list()} reaches beyond the {fw} x {fh} frame")
        return x, y, w, h

    def crop(self, image: np.ndarray) -> np.ndarray:
        x, y, w, h = self.box(image.shape)
        return image[y:y + h, x:x + w]


def fitted_roi_mismatch(fitted: Sequence[float], configured: Sequence[float]) -> str | None:
    """Why a detector fitted on region ``fitted`` (its metadata's ``roi``) must not judge with the configured
    ``[source] roi``; ``None`` when they agree. A detector knows only the region it was fitted on: another one is
    another picture."""
    fitted, configured = list(fitted), list(configured)
    if fitted == configured:
        return None
    return (f"the detector was fitted on [source] roi = {list(fitted)}, the configuration says {configured}: "
            "it judges nothing until it is fitted again on the new region (edge-agent retrain or fit)")
