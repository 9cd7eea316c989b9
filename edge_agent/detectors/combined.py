"""One score from several detectors: the pooled Gaussian (global changes) and the patch memory (small defects).

Neither wins everywhere (a pooled Gaussian averages a small scratch away; a patch memory is confused by parts
that appear at any rotation), so the operator gets both behind one score and one label-free threshold. Each
part's score is normalised by its own distribution on the good training images, measured out of fold exactly
as for the threshold (each original held out with its augmented copies): z = (s - median) / spread, where the
spread is the standard deviation of those out-of-fold scores. The parts' z are averaged, and the combined score
is exp(mean z): positive, so the threshold rule for distances applies unchanged, and multiplying the threshold
by a factor f moves the bar by ln(f) standard deviations (the sensitivity knob spans +-0.69 sigma).

The out-of-fold combined scores of the training images come out of ``fit`` as ``oof_scores_``, so the
threshold calibration does not have to refit the whole ensemble once per fold again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.detectors.base import Detector, Features, check_features, select_levels
from edge_agent.threshold import leave_one_out_scores

_Z_CLIP = 50.0  # exp(50) is far beyond any threshold; keeps the score finite for absurd inputs


class CombinedDetector(Detector):
    level_prefix = ""  # reads every level its parts read
    param_names = ("parts", "max_folds")
    needs_groups = True

    def __init__(self, parts: Sequence[str] = ("mahalanobis", "patch-knn"), max_folds: int = 5) -> None:
        self.parts = tuple(parts)
        self.max_folds = max_folds

    @staticmethod
    def _make(name: str) -> Detector:
        from edge_agent.detectors import make_detector

        return make_detector(name)

    @property
    def supports_heatmaps(self) -> bool:
        return any(p.supports_heatmaps for p in getattr(self, "parts_", []))

    def fit(self, features: Features, groups: Sequence[np.ndarray] | None = None) -> CombinedDetector:
        """``groups``: index arrays, one per original image (row 0 the original, then its augmented copies)."""
        if len(self.parts) < 2 or "combined" in self.parts:
            raise ValueError(f"combined needs at least two other detectors, got {self.parts}")
        if not isinstance(self.max_folds, int) or self.max_folds < 2:
            raise ValueError(f"max_folds must be an integer >= 2, got {self.max_folds!r}")
        n = len(next(iter(features.values())))
        groups = [np.array([i]) for i in range(n)] if groups is None else [np.asarray(g) for g in groups]
        if len(groups) < 2:
            raise ValueError("combined needs at least 2 good images to normalise its parts")
        self.parts_ = [self._make(name) for name in self.parts]
        levels = sorted({lv for p in self.parts_ for lv in select_levels(features, p.level_prefix, None)})
        shapes = {k: tuple(int(s) for s in v.shape[1:]) for k, v in check_features(features, levels, min_samples=2).items()}
        # The parts validate and convert for themselves: keeping the caller's (float32) arrays here instead of the
        # float64 copies check_features returns halves the fit's peak memory on the camera.
        arrays = {k: np.asarray(features[k]) for k in levels}
        by_group = [{k: v[g] for k, v in arrays.items()} for g in groups]
        oof = []
        for i, name in enumerate(self.parts):
            oof.append(leave_one_out_scores(lambda name=name: self._make(name), by_group, self.max_folds))
            self.parts_[i].fit(arrays)
        oof = np.stack(oof)  # (parts, groups)
        self.loc_ = np.median(oof, axis=1)
        self.scale_ = np.maximum(oof.std(axis=1, ddof=1), 1e-6 * np.abs(self.loc_) + 1e-12)
        self.oof_scores_ = self._combine(oof)
        self.levels_ = tuple(levels)
        self.shapes_ = shapes
        self.n_train_ = n
        return self

    def _combine(self, part_scores: np.ndarray) -> np.ndarray:
        z = (part_scores - self.loc_[:, None]) / self.scale_[:, None]
        return np.exp(np.clip(z.mean(axis=0), -_Z_CLIP, _Z_CLIP))

    def score_samples(self, features: Features) -> np.ndarray:
        arrays = self._check_score_input(features)
        return self._combine(np.stack([p.score_samples(arrays) for p in self.parts_]))

    def heatmaps(self, features: Features) -> np.ndarray:
        """The spatial part's map, in its own standard deviations above its typical good score."""
        for i, part in enumerate(self.parts_):
            if part.supports_heatmaps:
                return ((part.heatmaps(features) - self.loc_[i]) / self.scale_[i]).astype(np.float32)
        raise ValueError(f"none of {self.parts} gives a heat map")

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from edge_agent.detectors.persistence import detector_spec

        attrs, arrays = super().get_state()
        attrs["parts_"] = []
        for i, part in enumerate(self.parts_):
            spec, p_arrays = detector_spec(part)
            attrs["parts_"].append(spec)
            arrays.update({f"part{i}__{k}": v for k, v in p_arrays.items()})
        return attrs, arrays

    def set_state(self, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> CombinedDetector:
        from edge_agent.detectors.persistence import detector_from_spec

        super().set_state(attrs, arrays)
        self.parts_ = []
        for i, spec in enumerate(attrs["parts_"]):
            prefix = f"part{i}__"
            part_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.parts_.append(detector_from_spec(spec, part_arrays))
        return self

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"loc": self.loc_, "scale": self.scale_, "oof_scores": self.oof_scores_}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.loc_, self.scale_, self.oof_scores_ = arrays["loc"], arrays["scale"], arrays["oof_scores"]
