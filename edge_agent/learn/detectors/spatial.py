"""What the spatial detectors (PaDiM, the patch memory) share: a heat-map grid fixed at fit time and saved with
their arrays (`GridDetector`), resizing stacks of feature maps onto a grid, and the Gaussian blur of heat maps."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import cv2
import numpy as np

from edge_agent.learn.detectors.base import SPATIAL, Detector

#: OpenCV resizes at most this many channels in one call (CV_CN_MAX).
CV_MAX_CHANNELS = 512


def resize_maps(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, h, w, c) maps resized to (n, H, W, c), in their own dtype: area averaging to shrink, bilinear to enlarge."""
    n, h, w, c = maps.shape
    H, W = grid
    if (h, w) == (H, W):
        return maps
    interp = cv2.INTER_AREA if (h >= H and w >= W) else cv2.INTER_LINEAR
    out = np.empty((n, H, W, c), dtype=maps.dtype)
    for i in range(n):
        for start in range(0, c, CV_MAX_CHANNELS):
            part = np.ascontiguousarray(maps[i, :, :, start : start + CV_MAX_CHANNELS])
            out[i, :, :, start : start + CV_MAX_CHANNELS] = cv2.resize(part, (W, H), interpolation=interp).reshape(
                H, W, -1
            )
    return out


def blur_maps(maps: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian blur of each (h, w) map of an (n, h, w) stack, ``sigma`` in grid cells, reflecting border.

    Returns ``maps`` itself when ``sigma`` is 0; otherwise writes into ``out`` (a new array unless given; ``maps``
    itself blurs in place).
    """
    if not sigma > 0:
        return maps
    out = np.empty_like(maps) if out is None else out
    for i in range(maps.shape[0]):
        out[i] = cv2.GaussianBlur(maps[i], (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    return out


class GridDetector(Detector):
    """A detector on spatial levels whose heat maps live on ``grid_`` (h, w), chosen at fit time.

    The grid is saved as the array ``grid`` beside what `_get_map_arrays` returns.
    """

    level_prefix = SPATIAL
    supports_heatmaps = True
    grid_: tuple[int, ...]

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"grid": np.asarray(self.grid_, dtype=np.int64), **self._get_map_arrays()}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self._set_map_arrays(arrays)
        self.grid_ = tuple(int(s) for s in arrays["grid"])

    @abstractmethod
    def _get_map_arrays(self) -> dict[str, np.ndarray]:
        """Fitted arrays other than the grid, keyed by plain identifiers."""

    @abstractmethod
    def _set_map_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of `_get_map_arrays` (validating before anything is set)."""
