"""Map handling shared by the spatial detectors (PaDiM, the patch memory): resizing stacks of feature maps onto
a common grid, and the Gaussian blur of their heat maps."""

from __future__ import annotations

import cv2
import numpy as np

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
