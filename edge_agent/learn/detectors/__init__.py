"""Anomaly detectors behind one scikit-learn-like interface (`Detector`), created by name.

Names: ``mahalanobis`` (Ledoit-Wolf Gaussian, the paper's method and the default), ``mahalanobis-empirical``
(the same with the empirical covariance, for comparison), ``knn``, ``padim``, ``patch-knn`` (a patch memory
with a greedy coreset, PatchCore-style) and ``combined`` (the Gaussian and the patch memory behind one score).
"""

from __future__ import annotations

from typing import Any

from edge_agent.learn.detectors.base import Detector
from edge_agent.learn.detectors.combined import CombinedDetector
from edge_agent.learn.detectors.knn import KNNDetector
from edge_agent.learn.detectors.mahalanobis import MahalanobisDetector
from edge_agent.learn.detectors.padim import PadimDetector, upsample_heatmap
from edge_agent.learn.detectors.patch_memory import PatchMemoryDetector

DEFAULT_DETECTOR = "mahalanobis"

#: Registry name -> (class, parameters fixed by the name).
_REGISTRY: dict[str, tuple[type[Detector], dict[str, Any]]] = {
    "mahalanobis": (MahalanobisDetector, {"covariance": "ledoit-wolf"}),
    "mahalanobis-empirical": (MahalanobisDetector, {"covariance": "empirical"}),
    "knn": (KNNDetector, {}),
    "padim": (PadimDetector, {}),
    "patch-knn": (PatchMemoryDetector, {}),
    "combined": (CombinedDetector, {}),
}

DETECTOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: Class name -> class, used to rebuild a saved detector without pickle.
DETECTOR_CLASSES: dict[str, type[Detector]] = {cls.__name__: cls for cls, _ in _REGISTRY.values()}


def make_detector(name: str = DEFAULT_DETECTOR, **params: Any) -> Detector:
    """Create an unfitted detector by registry name; ``params`` go to its constructor."""
    try:
        cls, fixed = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; valid names: {', '.join(DETECTOR_NAMES)}") from None
    clash = sorted(set(fixed) & set(params))
    if clash:
        raise ValueError(f"detector {name!r} fixes {clash}; pass another name instead of overriding them")
    return cls(**fixed, **params)


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
    "upsample_heatmap",
]
