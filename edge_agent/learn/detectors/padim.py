"""PaDiM: one Gaussian per feature-map location (Defard et al. 2020, "PaDiM: a Patch Distribution Modeling
Framework for Anomaly Detection and Localization"; the spatial alternative of Gutierrez et al. 2021).

The spatial levels are brought to the grid of the largest level and concatenated along channels; a fixed random
subset of channels is kept (PaDiM Sec. 3.2: random selection works as well as PCA and costs nothing). Each
location gets a mean and a Ledoit-Wolf covariance (the same `gaussian` module as the image-level detector,
vectorised over locations); the per-location Mahalanobis distances form a heat map whose maximum, after a
Gaussian blur, is the image score.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_agent.learn.detectors import gaussian
from edge_agent.learn.detectors.base import Features, is_positive_int, max_over_locations
from edge_agent.learn.detectors.spatial import GridDetector, blur_maps, resize_maps

#: Samples scored together: bounds the (locations x samples x channels) temporaries on a camera.
_SCORE_BATCH = 16


class PadimDetector(GridDetector):
    """Per-location Gaussian on concatenated spatial maps; image score = max of the blurred distance map.

    Parameters
    ----------
    n_channels : channels kept out of the concatenated maps (fixed random subset; all when fewer exist)
    seed : seed of that subset, so that a refit on the same levels picks the same channels
    levels : tuple of "spatial/*" names or None (all spatial levels)
    sigma : standard deviation of the Gaussian blur, in heat-map grid cells (0 disables it). PaDiM blurs with
        sigma = 4 px at 224 px input on a stride-4 grid, i.e. one grid cell; the default follows that.

    ``score_samples`` returns HIGHER = MORE ANOMALOUS (scikit-learn's convention is the opposite);
    ``heatmaps`` returns the (n, h, w) float32 maps before reduction.

    Fitted attributes: ``grid_`` (h, w), ``channel_indices_`` (into the concatenation of ``levels_``),
    ``means_`` (h*w, k), ``precisions_`` (h*w, k, k), ``shrinkages_`` (h*w,), ``n_train_``.

    Memory: the model holds h*w*k^2 precision entries. With all channels that would not fit a camera: PaDiM's
    WideResNet-50 maps (56 x 56 locations, 1792 channels) need 3136 x 1792^2 x 4 B = 40.3 GB; even
    EfficientNet-B4's stage 3+4 maps at 380 px (48 x 48 locations, 56 + 112 = 168 channels) need
    2304 x 168^2 x 4 B = 260 MB in float32. With k = 100 channels a 28 x 28 grid needs 784 x 100^2 x 4 B =
    31 MB, a 48 x 48 grid 92 MB: reduce ``n_channels`` or the input size to fit. ``nbytes_`` reports the
    fitted figure (means, precisions, shrinkages, channel indices, grid).
    """

    param_names = ("n_channels", "seed", "levels", "sigma")

    def __init__(
        self,
        n_channels: int = 100,
        seed: int = 0,
        levels: tuple[str, ...] | None = None,
        sigma: float = 1.0,
    ) -> None:
        self.set_params(n_channels=n_channels, seed=seed, levels=levels, sigma=sigma)

    def _embed(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Selected channels of every level on the common grid, as (n, h*w, k) float32.

        Channels are selected before resizing so that dropped channels are never interpolated.
        """
        parts, offset = [], 0
        for name in self.levels_:
            c = self.shapes_[name][2]
            idx = self.channel_indices_[(self.channel_indices_ >= offset) & (self.channel_indices_ < offset + c)]
            if idx.size:
                parts.append(resize_maps(arrays[name][..., idx - offset].astype(np.float32), self.grid_))
            offset += c
        emb = np.concatenate(parts, axis=-1)
        return emb.reshape(emb.shape[0], -1, emb.shape[-1])

    def fit(self, features: Features) -> PadimDetector:
        if not is_positive_int(self.n_channels):
            raise ValueError(f"n_channels must be a positive integer, got {self.n_channels!r}")
        if not np.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        arrays = self._check_fit_input(features)
        # Target grid: the largest level (the earliest, finest tap), as PaDiM does.
        self.grid_ = max((self.shapes_[k][:2] for k in self.levels_), key=lambda hw: hw[0] * hw[1])
        total = sum(self.shapes_[k][2] for k in self.levels_)
        rng = np.random.default_rng(self.seed)
        self.channel_indices_ = np.sort(rng.choice(total, size=min(int(self.n_channels), total), replace=False))

        X = np.swapaxes(self._embed(arrays), 0, 1).astype(np.float64)  # (L, n, k)
        cov, shrinkage = gaussian.ledoit_wolf(X)
        self.means_ = X.mean(axis=1)
        self.shrinkages_ = np.atleast_1d(shrinkage)
        self.precisions_ = gaussian.compact_precision(gaussian.precision(cov), np.swapaxes(X, 0, 1), self.means_)
        return self

    def heatmaps(self, features: Features) -> np.ndarray:
        """Per-location Mahalanobis distance maps, (n, h, w) float32, blurred with ``sigma``."""
        emb = self._embed(self._check_score_input(features))
        h, w = self.grid_
        maps = np.empty((emb.shape[0], h, w), dtype=np.float32)
        for start in range(0, emb.shape[0], _SCORE_BATCH):
            batch = emb[start : start + _SCORE_BATCH]
            dist = gaussian.mahalanobis(batch, self.means_, self.precisions_)
            maps[start : start + _SCORE_BATCH] = dist.reshape(-1, h, w)
        return blur_maps(maps, self.sigma, out=maps)

    def score_samples(self, features: Features) -> np.ndarray:
        return max_over_locations(self.heatmaps(features))

    def score_and_heatmaps(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        maps = self.heatmaps(features)
        return max_over_locations(maps), maps

    def _get_map_arrays(self) -> dict[str, np.ndarray]:
        return {
            "channel_indices": self.channel_indices_,
            "means": self.means_,
            "precisions": self.precisions_,
            "shrinkages": self.shrinkages_,
        }

    def _set_map_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.channel_indices_ = np.asarray(arrays["channel_indices"])
        self.means_ = np.asarray(arrays["means"])
        self.precisions_ = np.asarray(arrays["precisions"])
        self.shrinkages_ = np.asarray(arrays["shrinkages"])
