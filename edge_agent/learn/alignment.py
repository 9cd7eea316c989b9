"""Whether the good parts share one pose: a label-free test, from the training images alone.

Why: the patch memory compares each patch of a part with the patches of the good parts; when parts lie at any
angle (loose screws, cast parts on a belt), a good part's patches are turned versions of the memory's and look
like defects, while the paper's Gaussian on globally pooled features hardly notices the turn. The combined
detector's synthetic damage cannot see this (damage painted on a good image is found by both), so the pose is
tested directly.

The test: each image's structure tensor gives its dominant orientation (doubled angle, weighted by how strongly
oriented the image is); if the parts share a pose, these agree. Their mean resultant length R-bar is compared
with what uniformly random poses give, by Rayleigh's test at `RAYLEIGH_P`: a conventional significance level,
not a value fitted to any data set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

#: Rayleigh's test rejects "the orientations are uniformly random" below this probability.
RAYLEIGH_P = 0.01
_SIDE = 224  # the orientation of the whole part, not of its fine texture: a coarse, fixed-size view


def orientation_alignment(images: Sequence[np.ndarray]) -> float:
    """R-bar of the images' dominant orientations: 1 = all the same, about 1/sqrt(n) for random poses."""
    if not images:
        raise ValueError("orientation alignment needs at least one image")
    vectors = []
    for image in images:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
        grey = cv2.resize(grey, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
        gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
        jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
        vectors.append(complex(jxx - jyy, 2 * jxy) / max(jxx + jyy, 1e-12))
    v = np.array(vectors)
    return float(abs(v.mean()) / max(float(np.abs(v).mean()), 1e-12))


def is_aligned(alignment: float, n: int) -> bool:
    """False when an R-bar this low is what n random poses give with probability at least `RAYLEIGH_P`
    (below sqrt(-ln p / n): 0.68 for 10 images). With so few images that even a perfect R-bar of 1 stays below
    that bound (n <= 4 at p = 0.01), the test cannot tell, and the parts count as aligned: the detector's usual
    weighting, not a verdict on evidence that does not exist."""
    bound = math.sqrt(-math.log(RAYLEIGH_P) / n)
    return bound >= 1.0 or alignment >= bound


def share_one_pose(images: Sequence[np.ndarray]) -> tuple[bool, float]:
    """(aligned, R-bar) of the good images."""
    alignment = orientation_alignment(images)
    return is_aligned(alignment, len(images)), alignment
