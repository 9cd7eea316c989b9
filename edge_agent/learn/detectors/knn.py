"""Nearest-neighbour detector on concatenated pooled features (the KNN baseline of Gutierrez et al. 2021).

Score = mean squared euclidean distance to the k nearest training samples. Unlike the Gaussian it assumes no
shape for "normal", which helps when good parts come in a few distinct looks (two product variants), at the
price of keeping every training vector.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_agent.learn.detectors.base import BLOCK_ELEMENTS, POOLED, Detector, Features, is_positive_int


def _concat(arrays: Mapping[str, np.ndarray], levels: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([arrays[name] for name in levels], axis=1)


def knn_mean_sq_distance(queries: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k smallest squared euclidean distances from each query row to the training rows.

    Uses ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x in float64, in blocks of queries so that the distance matrix
    never exceeds ``BLOCK_ELEMENTS`` entries whatever the batch size (a camera has little RAM), and
    ``np.partition`` instead of a full sort (O(N) per query).
    """
    train64 = np.asarray(train, dtype=np.float64)
    train_sq = np.einsum("ij,ij->i", train64, train64)
    block = max(1, BLOCK_ELEMENTS // max(1, train64.shape[0]))
    out = np.empty(queries.shape[0], dtype=np.float64)
    for start in range(0, queries.shape[0], block):
        q = np.asarray(queries[start : start + block], dtype=np.float64)
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + train_sq[None, :] - 2.0 * (q @ train64.T)
        np.maximum(d2, 0.0, out=d2)  # rounding can give tiny negatives for a query equal to a training row
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        out[start : start + block] = nearest.mean(axis=1)
    return out


class KNNDetector(Detector):
    """k-nearest-neighbour distance on the concatenated pooled levels.

    Parameters
    ----------
    k : number of neighbours (paper: 1)
    levels : tuple of "pooled/*" names or None (all pooled levels, concatenated in ``levels_`` order)

    ``score_samples`` returns HIGHER = MORE ANOMALOUS (scikit-learn's convention is the opposite).

    Fitted attributes: ``train_`` (n_train, sum of dims), ``levels_``, ``n_train_``. ``train_`` keeps float32
    when every input level is float32 (what a TFLite model emits), which is lossless and halves memory;
    otherwise float64.
    """

    level_prefix = POOLED
    param_names = ("k", "levels")

    def __init__(self, k: int = 1, levels: tuple[str, ...] | None = None) -> None:
        self.k = k
        self.levels = levels

    def fit(self, features: Features) -> KNNDetector:
        if not is_positive_int(self.k):
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        arrays = self._check_fit_input(features)
        if self.k > self.n_train_:
            raise ValueError(f"k={self.k} exceeds the number of training samples ({self.n_train_})")
        dtype = np.result_type(np.float32, *(np.asarray(features[name]).dtype for name in self.levels_))
        self.train_ = _concat(arrays, self.levels_).astype(dtype)
        return self

    def score_samples(self, features: Features) -> np.ndarray:
        arrays = self._check_score_input(features)
        return knn_mean_sq_distance(_concat(arrays, self.levels_), self.train_, int(self.k))

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"train": self.train_}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.train_ = np.asarray(arrays["train"])
