"""Anomaly detectors behind one scikit-learn-like interface (`Detector`), created by name.

Names: ``combined`` (the default: the pooled Gaussian and the patch memory behind one score), ``mahalanobis``
(Ledoit-Wolf Gaussian, the paper's method), ``mahalanobis-empirical`` (the same with the empirical covariance,
for comparison), ``knn``, ``padim`` and ``patch-knn`` (a patch memory with a greedy coreset, PatchCore-style).

This package fills `edge_agent.learn.detectors.registry`, which owns `DEFAULT_DETECTOR` and `make_detector`.
"""

from __future__ import annotations

from edge_agent.learn.detectors.base import Detector
from edge_agent.learn.detectors.combined import CombinedDetector
from edge_agent.learn.detectors.knn import KNNDetector
from edge_agent.learn.detectors.mahalanobis import MahalanobisDetector
from edge_agent.learn.detectors.padim import PadimDetector
from edge_agent.learn.detectors.patch_memory import PatchMemoryDetector
from edge_agent.learn.detectors.registry import (
    DEFAULT_DETECTOR,
    detector_classes,
    detector_names,
    make_detector,
    register,
)

register("mahalanobis", MahalanobisDetector, covariance="ledoit-wolf")
register("mahalanobis-empirical", MahalanobisDetector, covariance="empirical")
register("knn", KNNDetector)
register("padim", PadimDetector)
register("patch-knn", PatchMemoryDetector)
register("combined", CombinedDetector)

DETECTOR_NAMES: tuple[str, ...] = detector_names()

#: Class name -> class, used to rebuild a saved detector without pickle.
DETECTOR_CLASSES: dict[str, type[Detector]] = detector_classes()

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTOR_CLASSES",
    "DETECTOR_NAMES",
    "Detector",
    "KNNDetector",
    "MahalanobisDetector",
    "PadimDetector",
    "PatchMemoryDetector",
    "CombinedDetector",
    "make_detector",
]
