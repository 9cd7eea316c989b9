"""One score from several detectors: the pooled Gaussian (global changes) and the patch memory (small defects).

Neither wins everywhere (a pooled Gaussian averages a small scratch away; a patch memory is confused by parts
that appear at any rotation), so the operator gets both behind one score and one label-free threshold.

Normalising: each part's score is turned into standard deviations above the good images, z = (log s - m) / sd,
where m and sd are the mean and standard deviation of the log of its out-of-fold scores on the good training
images (each original held out with its augmented copies, exactly as for the threshold). Logs because distances
of good parts are right-skewed, which the threshold models as log-normal too.

Weighting: an equal-weight mean lets a weak part dilute a strong one (on cells whose defects are small cracks,
mean z lost 0.02 AUROC to the patch memory alone). Without labelled defects, the weights come from synthetic
damage (`edge_agent.learn.pseudo_defects`: a few damaged copies of each good image, scored by the same out-of-fold
models): part j gets weight proportional to mu_j, its mean z on the damaged copies (0 when negative). That is
Fisher's linear discriminant for parts whose good z have unit variance and which a defect shifts by mu_j: the
part that separates damage from the good images gets the larger say, and one that cannot see it none (the
rule ignores the parts' correlation, which 10 good images estimate poorly; a correlated Fisher rule did no better,
see docs/results.md). A part with weight 0 is not even run when scoring. When no
part puts the damage even one standard deviation above the good images (the damage says nothing about them),
or without damaged copies (features given directly), the parts are weighted equally. ``damage_shift_`` keeps
mu for the fit log and the operator.

The combined score is exp(sd * sum_j w_j z_j), weights summing to 1, with sd = sum_j w_j sd_j: for one part
alone it is that part's distance divided by its typical good distance. Positive, so the threshold rule for
distances applies unchanged; and on the parts' own log scale, so the threshold's 10 % margin and the sensitivity
knob (x0.5 to x2) move the bar by as many of the parts' standard deviations as they would for either part alone.
(With exp(sum w z), whose log spreads 5 to 20 times wider than a patch distance's, the same margin was worth a
tenth of a standard deviation or less, and the combined detector rejected 6-7 % of good elpv cells where the
patch memory alone rejected 1-4 %.)

The out-of-fold combined scores of the training images come out of ``fit`` as ``oof_scores_``, so the
threshold calibration does not have to refit the whole ensemble once per fold again. The patch memory's fold
models are its fit on all images less the held-out images' patches (`PatchMemoryDetector.held_out_models`), so its
coreset, most of the fit's time, is selected once rather than once more per fold.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from edge_agent.learn.detectors.base import POOLED, Detector, Features, check_features, select_levels
from edge_agent.learn.detectors.registry import detector_from_spec, detector_spec, make_detector
from edge_agent.learn.heldout import Reducible, first_rows, held_out_scores, reduced_held_out_scores, take_groups

log = logging.getLogger(__name__)

_Z_CLIP = 50.0  # exp(50) is far beyond any threshold; keeps the score finite for absurd inputs
_VISIBLE = 1.0  # damage that no part puts a standard deviation above the good images tells nothing about them
_TINY = 1e-12  # floor under a distance before its log: an exact match to the memory is 0


def _log_distance(scores: Any) -> np.ndarray:
    return np.log(np.maximum(scores, _TINY))


class CombinedDetector(Detector):
    level_prefix = ""  # reads every level its parts read
    param_names = ("parts", "max_folds")
    needs_groups = True
    needs_defects = True
    needs_pose = True

    def __init__(self, parts: Sequence[str] = ("mahalanobis", "patch-knn"), max_folds: int = 5) -> None:
        self.parts = tuple(parts)
        self.max_folds = max_folds

    @property
    def supports_heatmaps(self) -> bool:
        """Only a spatial part that has a say in the score may explain it."""
        return self._map_part() is not None

    def _map_part(self) -> int | None:
        weights = getattr(self, "weights_", None)
        for i, part in enumerate(getattr(self, "parts_", [])):
            if part.supports_heatmaps and weights is not None and weights[i] > 0:
                return i
        return None

    def describe(self) -> dict[str, Any]:
        return {"weights": dict(zip(self.parts, np.round(self.weights_, 4).tolist())),
                "damage_shift": dict(zip(self.parts, np.round(self.damage_shift_, 3).tolist()))}

    def fit(
        self,
        features: Features,
        groups: Sequence[np.ndarray] | None = None,
        defects: Sequence[Features] | None = None,
        aligned: bool = True,
    ) -> CombinedDetector:
        """``groups``: index arrays, one per original image (row 0 the original, then its augmented copies).

        ``defects``: one entry per group, the features of damaged copies of that original
        (`edge_agent.learn.pseudo_defects`); they set the parts' weights. None weights the parts equally.
        ``aligned``: False when the good parts lie at any angle (`edge_agent.learn.alignment`): then the parts
        that read pooled features judge alone, as turned patches look like defects to a patch memory while
        damage painted on a good image cannot show that.
        """
        if len(self.parts) < 2 or "combined" in self.parts:
            raise ValueError(f"combined needs at least two other detectors, got {self.parts}")
        if not isinstance(self.max_folds, int) or self.max_folds < 2:
            raise ValueError(f"max_folds must be an integer >= 2, got {self.max_folds!r}")
        n = len(next(iter(features.values())))
        groups = [np.array([i]) for i in range(n)] if groups is None else [np.asarray(g) for g in groups]
        if len(groups) < 2:
            raise ValueError("combined needs at least 2 good images to normalise its parts")
        self.parts_ = [make_detector(name) for name in self.parts]
        levels = sorted({lv for p in self.parts_ for lv in select_levels(features, p.level_prefix, None)})
        shapes = {k: tuple(int(s) for s in v.shape[1:]) for k, v in check_features(features, levels, min_samples=2).items()}
        # The parts validate and convert for themselves: keeping the caller's (float32) arrays here instead of the
        # float64 copies check_features returns halves the fit's peak memory on the camera.
        arrays = {k: np.asarray(features[k]) for k in levels}
        by_group = take_groups(arrays, groups)
        probes = first_rows(by_group)
        if defects is not None:
            if len(defects) != len(groups):
                raise ValueError(f"damaged copies for {len(defects)} images, but {len(groups)} good images")
            for i, d in enumerate(defects):
                try:
                    check_features(d, levels, trailing_shapes=shapes)
                except ValueError as exc:
                    raise ValueError(f"damaged copies of good image {i} do not match the good images: {exc}") from None
                probes[i] = {k: np.concatenate([probes[i][k], np.asarray(d[k])]) for k in levels}
        for part in self.parts_:
            part.fit(arrays)
        # A part that can drop rows (the patch memory) gives its folds' models from this fit: no coreset per fold.
        held = [reduced_held_out_scores(part, arrays, groups, probes, self.max_folds) if isinstance(part, Reducible)
                else held_out_scores(partial(make_detector, name), by_group, probes, self.max_folds)
                for name, part in zip(self.parts, self.parts_)]
        oof = _log_distance([[h[0] for h in part] for part in held])  # (parts, groups)
        self.loc_ = oof.mean(axis=1)
        self.scale_ = np.maximum(oof.std(axis=1, ddof=1), 1e-6)
        self.weights_ = np.full(len(self.parts), 1.0 / len(self.parts))
        self.damage_shift_ = np.full(len(self.parts), np.nan)
        if defects is not None:
            damaged = _log_distance([np.concatenate([h[1:] for h in part]) for part in held])
            self.damage_shift_ = ((damaged - self.loc_[:, None]) / self.scale_[:, None]).mean(axis=1)
            if self.damage_shift_.max() > _VISIBLE:
                self.weights_ = np.maximum(self.damage_shift_, 0.0) / np.maximum(self.damage_shift_, 0.0).sum()
        pooled = np.array([part.level_prefix == POOLED for part in self.parts_], dtype=float)
        if not aligned and 0 < pooled.sum() < len(pooled):
            self.weights_ = pooled / pooled.sum()
            log.info("combined: the good parts lie at any angle: the pooled parts alone judge")
        log.info("combined: damaged copies shift the parts by %s good standard deviations -> weights %s",
                 dict(zip(self.parts, np.round(self.damage_shift_, 2).tolist())),
                 dict(zip(self.parts, np.round(self.weights_, 3).tolist())))
        self.oof_scores_ = self._combine(np.exp(oof))
        self.levels_ = tuple(levels)
        self.shapes_ = shapes
        self.n_train_ = n
        return self

    def _z(self, part: int, scores: np.ndarray) -> np.ndarray:
        """A part's distances (any shape) -> standard deviations above its good images."""
        return (_log_distance(scores) - self.loc_[part]) / self.scale_[part]

    def _combine(self, part_scores: Sequence[np.ndarray | None]) -> np.ndarray:
        """Per part (None for a part with weight 0) its (n,) distances -> (n,) combined scores."""
        z = sum(w * self._z(i, s) for i, (w, s) in enumerate(zip(self.weights_, part_scores)) if w > 0)
        return np.exp(np.clip(float(self.weights_ @ self.scale_) * z, -_Z_CLIP, _Z_CLIP))

    def _score(self, features: Features, with_map: bool) -> tuple[np.ndarray, np.ndarray | None]:
        arrays = self._check_score_input(features)
        map_part = self._map_part() if with_map else None
        if with_map and map_part is None:
            raise ValueError(f"no part of {self.parts} with a say in the score gives a heat map")
        scores: list[np.ndarray | None] = []
        maps = None
        for i, part in enumerate(self.parts_):
            if i == map_part:
                part_scores, part_maps = part.score_and_heatmaps(arrays)  # one search for both
                maps = (part_maps / np.exp(self.loc_[i])).astype(np.float32)
            else:
                part_scores = part.score_samples(arrays) if self.weights_[i] > 0 else None
            scores.append(part_scores)
        return self._combine(scores), maps

    def score_samples(self, features: Features) -> np.ndarray:
        return self._score(features, with_map=False)[0]

    def score_and_heatmaps(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """Scores, and the spatial part's map as a ratio to its typical good image's score (1 = typical good).

        Linear, not in standard deviations of logs: the overlay stretches a map between its own extremes, and a
        log scale lifts the many near-zero patches into the warm colours, hiding where the defect is."""
        return self._score(features, with_map=True)  # type: ignore[return-value]

    def heatmaps(self, features: Features) -> np.ndarray:
        return self.score_and_heatmaps(features)[1]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        attrs, arrays = super().get_state()
        attrs["parts_"] = []
        for i, part in enumerate(self.parts_):
            spec, p_arrays = detector_spec(part)
            attrs["parts_"].append(spec)
            arrays.update({f"part{i}__{k}": v for k, v in p_arrays.items()})
        return attrs, arrays

    def set_state(self, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> CombinedDetector:
        super().set_state(attrs, arrays)
        self.parts_ = []
        for i, spec in enumerate(attrs["parts_"]):
            prefix = f"part{i}__"
            part_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.parts_.append(detector_from_spec(spec, part_arrays))
        return self

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"loc": self.loc_, "scale": self.scale_, "weights": self.weights_, "damage_shift": self.damage_shift_,
                "oof_scores": self.oof_scores_}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        if "weights" not in arrays:
            raise ValueError("fitted by an earlier version (equal weights, other normalisation): retrain it")
        self.loc_, self.scale_, self.oof_scores_ = arrays["loc"], arrays["scale"], arrays["oof_scores"]
        self.weights_, self.damage_shift_ = arrays["weights"], arrays["damage_shift"]
