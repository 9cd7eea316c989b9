"""The user's calibration folder: checked, resized, and split into calibration and held-out images.

Why held out: the fidelity report compares quantised with float features, and doing that on the very
images the int8 ranges were fitted to would flatter the quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.capture.images import ImageFolderError, read_folder
from edge_agent.capture.preprocess import resize_rgb

MIN_CALIBRATION_IMAGES = 10


@dataclass
class CalibrationSet:
    folder: Path
    calibration: list[np.ndarray]  # RGB uint8 at the model's input size
    holdout: list[np.ndarray]
    calibration_names: list[str]
    holdout_names: list[str]


def load_calibration(folder: str | Path, size: int, holdout_every: int = 5,
                     min_images: int = MIN_CALIBRATION_IMAGES) -> CalibrationSet:
    """Every ``holdout_every``-th image (sorted by name) is held out for the fidelity report."""
    if holdout_every < 2:
        raise ImageFolderError("holdout_every must be at least 2 so that some images calibrate")
    paths, images = read_folder(folder, min_images=min_images)
    resized = [resize_rgb(im, (size, size)) for im in images]
    held = [i for i in range(len(paths)) if i % holdout_every == holdout_every - 1]
    kept = [i for i in range(len(paths)) if i not in set(held)]
    return CalibrationSet(
        Path(folder), [resized[i] for i in kept], [resized[i] for i in held],
        [paths[i].name for i in kept], [paths[i].name for i in held],
    )
