"""Shared detector interface and input validation.

Features reach a detector as a flat mapping from level name to array: ``"pooled/<tap>"`` levels are
(n, d) global-average-pooled vectors, ``"spatial/<tap>"`` levels are (n, h, w, c) NHWC feature maps. A detector
declares which family it reads; the exact levels are chosen at fit time and frozen in ``levels_`` so that a
model whose outputs come back in another order (TFLite does not keep the Keras order) is still scored
consistently. Validation errors are ValueErrors that name the offending level, because on a camera they are
read in a log by someone who did not write the code.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from edge_agent.embed.manifest import Features

POOLED = "pooled/"
SPATIAL = "spatial/"
_NDIM = {POOLED: 2, SPATIAL: 4}
#: Upper bound on the elements of one (queries x training samples or memory patches) distance block, whatever the
#: batch size (a camera has little RAM): 32 MB in float64, 16 MB in float32.
BLOCK_ELEMENTS = 1 << 22


def _natural_key(name: str) -> list[Any]:
    """Sort "stage10" after "stage9" so the default level order reads the way the network is built."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def is_positive_int(value: Any) -> bool:
    """True for 1, 2, ... including numpy integers; False for bools, floats and strings (a typo in a config)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def select_levels(features: Features, prefix: str, levels: Sequence[str] | None) -> tuple[str, ...]:
    """Levels a detector will fit on: the given ones (in the given order) or every key starting with prefix."""
    if levels is None:
        chosen = sorted((k for k in features if k.startswith(prefix)), key=_natural_key)
        if not chosen:
            raise ValueError(
                f"no '{prefix}*' feature levels in the input (got {sorted(features)}); "
                f"this detector needs {prefix.rstrip('/')} features"
            )
        return tuple(chosen)
    if isinstance(levels, str):
        raise ValueError(f"levels must be a sequence of level names, not the string {levels!r}")
    chosen = tuple(levels)
    if not chosen:
        raise ValueError("levels must name at least one feature level")
    wrong = [k for k in chosen if not k.startswith(prefix)]
    if wrong:
        raise ValueError(f"levels {wrong} are not '{prefix}*' levels, which this detector reads")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"levels contain duplicates: {list(chosen)}")
    return chosen


def check_features(
    features: Features,
    levels: Sequence[str],
    *,
    min_samples: int = 1,
    trailing_shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtype: type = np.float64,
) -> dict[str, np.ndarray]:
    """Validate the named levels and return them as ``dtype`` arrays (float64 unless a detector asks otherwise).

    Checks, each with a message naming the level: presence, dimensionality for the level family, a common
    sample count across levels, at least ``min_samples`` samples, finite values, and (when scoring) the
    per-sample shape seen at fit time.
    """
    missing = [k for k in levels if k not in features]
    if missing:
        raise ValueError(f"missing feature levels {missing}; got {sorted(features)}")
    out: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for name in levels:
        arr = np.asarray(features[name])
        family = POOLED if name.startswith(POOLED) else SPATIAL
        if arr.ndim != _NDIM[family]:
            layout = "(n, d)" if family == POOLED else "(n, h, w, c)"
            raise ValueError(f"level {name!r} must have shape {layout}, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"level {name!r} must hold real numbers, got dtype {arr.dtype}")
        if trailing_shapes is not None and tuple(arr.shape[1:]) != tuple(trailing_shapes[name]):
            raise ValueError(
                f"level {name!r} has per-sample shape {arr.shape[1:]}, the detector was fitted on "
                f"{tuple(trailing_shapes[name])}: features from a different model or input size?"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"level {name!r} contains NaN or infinite values")
        counts[name] = arr.shape[0]
        out[name] = arr.astype(dtype, copy=False)
    if len(set(counts.values())) > 1:
        raise ValueError(f"levels disagree on the number of samples: {counts}")
    n = next(iter(counts.values()))
    if n < min_samples:
        raise ValueError(f"need at least {min_samples} samples, got {n}")
    return out


def max_over_locations(maps: np.ndarray) -> np.ndarray:
    """Image score of a spatial detector: its worst location, (n, h, w) -> (n,) float64 (PaDiM, PatchCore eq. 6)."""
    return maps.reshape(maps.shape[0], -1).max(axis=1).astype(np.float64)


class Detector(ABC):
    """Anomaly detector with scikit-learn conventions.

    ``fit(features)`` returns self; ``score_samples(features)`` returns one score per sample where HIGHER
    MEANS MORE ANOMALOUS. scikit-learn's outlier detectors use the opposite sign (higher = more normal); a
    distance is the natural quantity here and a threshold on it reads directly as "too far from normal".
    Constructor arguments are the parameters (``get_params``/``set_params``); everything learnt ends with an
    underscore. ``get_state``/``set_state`` expose the learnt state as JSON-able attributes plus plain arrays,
    which is all `edge_agent.learn.detectors.persistence` stores (no pickle).
    """

    #: Feature family read by this detector, POOLED or SPATIAL.
    level_prefix: ClassVar[str]
    #: Whether ``fit`` takes ``aligned`` (`edge_agent.learn.alignment`: do the good parts share one pose?).
    needs_pose: ClassVar[bool] = False
    #: Constructor parameter names, in signature order.
    param_names: ClassVar[tuple[str, ...]]
    #: Whether ``heatmaps(features) -> (n, h, w)`` shows where in the image the score comes from.
    supports_heatmaps: ClassVar[bool] = False
    #: Precision the detector computes in: float64 for covariances; a distance search is fine in float32, and
    #: halving the spatial maps' copy matters on a camera.
    compute_dtype: ClassVar[type] = np.float64
    #: Whether ``fit`` takes ``groups`` (index arrays: an original and its augmented copies) to hold out together.
    needs_groups: ClassVar[bool] = False
    #: Whether ``fit`` takes ``defects`` (per original, features of damaged copies: `edge_agent.learn.pseudo_defects`).
    needs_defects: ClassVar[bool] = False

    levels_: tuple[str, ...]
    shapes_: dict[str, tuple[int, ...]]
    n_train_: int

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (``deep`` is accepted for scikit-learn compatibility; nothing is nested)."""
        return {name: getattr(self, name) for name in self.param_names}

    def set_params(self, **params: Any) -> Detector:
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            raise ValueError(f"unknown parameters {unknown} for {type(self).__name__}; valid: {list(self.param_names)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "levels_")

    @property
    def nbytes_(self) -> int:
        """Bytes held by the fitted model's arrays (what `get_state` saves), e.g. to check it fits a camera."""
        return int(sum(np.asarray(a).nbytes for a in self.get_state()[1].values()))

    def _check_fit_input(self, features: Features) -> dict[str, np.ndarray]:
        """Select levels, validate, and record the common fitted attributes."""
        levels = select_levels(features, self.level_prefix, getattr(self, "levels", None))
        arrays = check_features(features, levels, min_samples=2, dtype=self.compute_dtype)
        self.levels_ = levels
        self.shapes_ = {k: tuple(int(s) for s in v.shape[1:]) for k, v in arrays.items()}
        self.n_train_ = int(next(iter(arrays.values())).shape[0])
        return arrays

    def _check_score_input(self, features: Features) -> dict[str, np.ndarray]:
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted yet; call fit() first")
        return check_features(features, self.levels_, trailing_shapes=self.shapes_, dtype=self.compute_dtype)

    @abstractmethod
    def fit(self, features: Features) -> Detector:
        """Learn "normal" from good samples only."""

    @abstractmethod
    def score_samples(self, features: Features) -> np.ndarray:
        """Anomaly score per sample, shape (n,), float64; higher = more anomalous."""

    def describe(self) -> dict[str, Any]:
        """What the fit decided that an operator may want to read (JSON-able); most detectors have nothing."""
        return {}

    def score_and_heatmaps(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """``score_samples`` and ``heatmaps`` (detectors with ``supports_heatmaps``) in one call.

        Spatial detectors read their score off the map and override this to compute it once: a camera that
        raises an alert with a heat map should not pay for the search twice.
        """
        return self.score_samples(features), self.heatmaps(features)  # type: ignore[attr-defined]

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Learnt state as (JSON-able attributes, named arrays)."""
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted; nothing to save")
        attrs = {
            "levels_": list(self.levels_),
            "shapes_": {k: list(v) for k, v in self.shapes_.items()},
            "n_train_": self.n_train_,
        }
        return attrs, self._get_arrays()

    def set_state(self, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Detector:
        """Restore what `get_state` returned, as if ``fit`` had just run."""
        self.levels_ = tuple(attrs["levels_"])
        self.shapes_ = {k: tuple(v) for k, v in attrs["shapes_"].items()}
        self.n_train_ = int(attrs["n_train_"])
        self._set_arrays(arrays)
        return self

    @abstractmethod
    def _get_arrays(self) -> dict[str, np.ndarray]:
        """Fitted arrays keyed by plain identifiers."""

    @abstractmethod
    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Inverse of `_get_arrays`."""
