"""Patch memory bank with nearest-neighbour scoring: PatchCore (Roth et al. 2022, "Towards Total Recall in
Industrial Anomaly Detection", CVPR), sized for a camera.

Numeric core, in the paper's terms:

1. Locally aware patch features (Sec. 3.1, eq. 2-3): every spatial level is averaged over a 3 x 3 neighbourhood
   (stride 1, reflecting border, so the map keeps its size), the finer map is brought to the grid of the
   coarsest one, and the levels are concatenated along channels: one vector per grid cell ("patch").
   EfficientNet-Lite0 at 224 px: stage 3 28x28x40 + stage 4 14x14x80 -> 14 x 14 = 196 patches of 120 dims;
   Lite2 at 260 px: 33x33x48 + 17x17x88 -> 17 x 17 = 289 patches of 136 dims. PatchCore brings the deeper
   map up to the finer grid instead; the coarser grid keeps 4x fewer patches, so memory and search time
   drop 4x at the same coreset ratio, which is what a camera needs.
2. Memory bank M: every patch of every training image, originals and augmented copies (eq. 4).
3. Coreset (Sec. 3.2, Alg. 1): greedy k-center selection of a fraction of M so that every discarded patch is
   close to a kept one. Few-shot training with 10x augmentation is highly redundant (the same bottle rim
   turned eleven times), so 10 % of the bank keeps nearly all of its coverage while the camera stores and
   searches 10x less (`edge_agent.learn.detectors.coreset`). As in PatchCore, distances for the selection may be
   computed on a random projection (Johnson-Lindenstrauss) to make selection cheaper; the bank keeps the full
   vectors.
4. Scoring (eq. 6-7): a test patch's score is the euclidean distance to its nearest memory patch; the image
   score is the MAXIMUM over its patches. The max, not a mean, because a defect on a part is typically small
   (a chip on a bottle rim covers one or two of 196 cells): averaging would dilute it among the good cells.
   PatchCore's reweighting of the maximum (eq. 7) by the density around the nearest neighbour is omitted:
   it needs b nearest neighbours of the memory patch stored or searched as well.

Grid alignment: between EfficientNet stages 3 and 4 lies one stride-2 convolution with TF "SAME" padding (the
Keras applications' ``correct_pad`` is the same). For an even input size 2n the padding is all on the far
side and output cell i is centred on input cell 2i + 1; for an odd size 2n - 1 it is symmetric and output i
is centred on input 2i. So the finer map is subsampled with ``[1::2]`` (28 -> 14) or ``[::2]`` (33 -> 17):
the kept stage-3 cell is the one centred on the same image point as the stage-4 cell. A 2 x 2 mean would
average cells centred half a stage-3 cell away from it, and ``[::2]`` on an even map a full cell away (8 px
at 224 px); after the 3 x 3 average both differences are small (see the measurements in the issue note). Any
other size ratio falls back to an area resize.

Cost: the coreset selection is O(P * k * d') time and O(P * d') memory for P training patches, k selected and
d' = projection dimensions (no P x P distance matrix: PatchCore's exact variant would need 21560^2 x 4 B =
1.9 GB at N = 10 with 10x augmentation). Scoring one image is one (L x d) @ (d x k) float32 matrix product
for its L patches, i.e. O(L * k * d), with the matrix bounded by ``BLOCK_ELEMENTS``.

Held-out folds (`edge_agent.learn.heldout`): the threshold and the combined detector's normalisation score each
training image with a model that never saw it. Refitting per fold would select a coreset per fold, most of a
fit's time. Instead the memory is selected once, on all images, and a fold's model is derived from it
(`held_out_models`): the memory less every patch of the held-out images and their copies, so no patch derived
from image i is in the memory that scores image i. That alone would leave a hole: greedy k-center keeps a patch
because it is far from everything kept so far, so where image i and image j have similar patches, keeping i's is
what made the selection skip j's, and without i's patches the region image i lies in would be covered by the
other images less densely than a coreset selected without i covers it (held-out distances, and thresholds, well
above a refit's: docs/performance.md). So the other images' patches whose nearest memory patch was one of the
held-out images' are put back, farthest first, until every patch of the other images is as close to the fold's
memory as the fit's covering radius (the largest distance of any training patch to the memory) allows
(`edge_agent.learn.detectors.coreset.extend_cover`): the fold covers its images as well as the fit covers all of
them, with patches of its own images only. What the fit on all images still decides is which of the other
images' patches, among near-equivalent ones, cover them; docs/performance.md compares the held-out scores with a
refit per fold. A fold's memory comes out a little larger than a refit's at the same ratio (it keeps the fit's
radius), and with ``coreset_ratio`` 1 (the full bank) it is exactly the refit one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from edge_agent.learn.detectors.base import BLOCK_ELEMENTS, Features, is_positive_int, max_over_locations
from edge_agent.learn.detectors.coreset import coreset_indices, extend_cover
from edge_agent.learn.detectors.spatial import GridDetector, blur_maps, resize_maps

#: Storage types accepted for the memory bank.
BANK_DTYPES = ("float32", "float16")


def box_filter_3x3(maps: np.ndarray) -> np.ndarray:
    """3 x 3 mean of (n, h, w, c) maps, stride 1, same size, zeros outside the map (PatchCore's
    ``AvgPool2d(3, 1, 1)``, padding counted).

    Why zeros rather than a reflected border: border patches then carry where they are, so a border
    patch is compared with border patches of the memory. Measured on elpv mono (Lite0 int8, N=10, x10, the same
    3 replicates): zero padding 0.879, edge-repeat reflection 0.804, no pooling 0.835; bottle stayed at 0.999.
    Separable and vectorised over the batch and channels (two shifted sums), float32 throughout.
    """
    x = np.asarray(maps, dtype=np.float32)
    p = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    p = np.pad(rows, ((0, 0), (0, 0), (1, 1), (0, 0)))
    out = p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]
    out *= np.float32(1.0 / 9.0)
    return out


def _axis_subsample(size: int, target: int) -> slice | None:
    """Stride-2 subsampling that keeps the cells centred under a stride-2 "SAME"/"VALID" convolution's outputs."""
    if size == target:
        return slice(None)
    if size == 2 * target:  # even input, SAME padding all on the far side: output i centred on 2i + 1
        return slice(1, None, 2)
    if size == 2 * target - 1:  # odd input, symmetric SAME padding: output i centred on 2i
        return slice(0, None, 2)
    if size == 2 * target + 1:  # VALID 3x3 stride-2 convolution: output i centred on 2i + 1
        return slice(1, 2 * target, 2)
    return None


def to_grid(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n, h, w, c) maps on the (H, W) grid: stride-2 subsampling for the 2H/2H-1/2H+1 sizes of consecutive
    backbone stages (aligned cell centres, see the module docstring), an area resize for any other size."""
    _, h, w, _ = maps.shape
    H, W = grid
    sy, sx = _axis_subsample(h, H), _axis_subsample(w, W)
    if sy is not None and sx is not None:
        return maps[:, sy, sx, :]
    return resize_maps(maps.astype(np.float32, copy=False), grid)


def nearest_rows(queries: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared euclidean distance from each query row to its nearest bank row (float32) and that row's index.

    min_j ||q - b_j||^2 = ||q||^2 + min_j (||b_j||^2 - 2 q.b_j): one float32 matrix product per block of
    queries, ``bank_sq`` = ||b_j||^2 precomputed at fit. Blocks keep the (queries x bank) matrix within
    ``BLOCK_ELEMENTS`` whatever the batch. Rounding can make the squared distance of a query equal to a bank
    row slightly negative: it is clamped to 0.
    """
    Q = np.ascontiguousarray(queries, dtype=np.float32)
    B = bank if bank.dtype == np.float32 else bank.astype(np.float32)  # float16 storage: search in float32
    out = np.empty(Q.shape[0], dtype=np.float32)
    index = np.empty(Q.shape[0], dtype=np.int64)
    block = max(1, BLOCK_ELEMENTS // max(1, B.shape[0]))
    for s in range(0, Q.shape[0], block):
        q = Q[s : s + block]
        g = np.dot(q * np.float32(-2.0), B.T)
        g += bank_sq
        nearest = g.argmin(axis=1)
        index[s : s + block] = nearest
        out[s : s + block] = g[np.arange(len(nearest)), nearest] + np.einsum("ij,ij->i", q, q)
    np.maximum(out, 0.0, out=out)
    return out, index


def nearest_distances(queries: np.ndarray, bank: np.ndarray, bank_sq: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query row to its nearest bank row, float32 (PatchCore eq. 6; `nearest_rows`)."""
    d2 = nearest_rows(queries, bank, bank_sq)[0]
    return np.sqrt(d2, out=d2)


class PatchMemoryDetector(GridDetector):
    """PatchCore-style patch memory bank (Roth et al. 2022) on the spatial levels; nearest-neighbour scoring.

    Parameters
    ----------
    coreset_ratio : fraction of the training patches kept by the greedy k-center coreset, in (0, 1];
        1.0 keeps the full bank (exact search). Default 0.1: with N = 10 good images and 10x augmentation
        (21560 Lite0 patches) the measured AUROC matched the full bank while memory and search fall 10x.
    coreset_max : cap on the number of memory patches kept by the coreset (default 4000; None for no cap). It
        bounds memory, search time and the greedy selection (O(patches x kept)) however many images a retrain
        collects: at N=50 the 10% coreset would otherwise keep 10,780 Lite0 patches and take minutes to select.
        At N=10 it changes nothing (2,156 Lite0 / 3,179 Lite2 patches). Not applied when ``coreset_ratio`` is 1.
    projection_dim : dimensions of the Gaussian random projection on which coreset distances are computed
        (PatchCore's speed-up; the bank keeps the full vectors); None, or at least the feature dimension,
        computes them on the features themselves.
    seed : seeds the projection and the coreset's first point, so a refit on the same features is identical.
    levels : tuple of "spatial/*" names or None (all spatial levels)
    dtype : storage of the bank, "float32" (default) or "float16" (half the memory; searched in float32)
    blur_sigma : Gaussian blur of `heatmaps`, in grid cells (0 disables it); never applied to the scores.

    ``score_samples`` returns HIGHER = MORE ANOMALOUS: the largest nearest-neighbour distance over the
    image's patches. ``heatmaps`` returns the (n, h, w) float32 patch distances on the grid (blurred by
    ``blur_sigma``); `edge_agent.deliver.snapshot.overlay` stretches one over the frame.

    Fitted attributes: ``grid_`` (h, w), ``memory_bank_`` (k, d), ``memory_sq_norms_`` (k,) float32,
    ``coreset_indices_`` (k,) int32 (rows of the training patches, image-major: index // (h*w) is the
    training image a memory patch came from), ``levels_``, ``shapes_``, ``n_train_``; ``nbytes_`` (memory bank, its
    squared norms, coreset indices and grid).

    Camera cost at N = 10 images x 11 (10x augmentation) x 196 patches x 120 dims (Lite0): full bank
    10.3 MB float32, coreset 0.1 about 1.1 MB; scoring is one 196 x 120 @ 120 x k product.
    """

    compute_dtype = np.float32
    param_names = ("coreset_ratio", "coreset_max", "projection_dim", "seed", "levels", "dtype", "blur_sigma")

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        coreset_max: int | None = 4000,
        projection_dim: int | None = 128,
        seed: int = 0,
        levels: tuple[str, ...] | None = None,
        dtype: str = "float32",
        blur_sigma: float = 0.5,
    ) -> None:
        self.set_params(coreset_ratio=coreset_ratio, coreset_max=coreset_max, projection_dim=projection_dim, seed=seed,
                        levels=levels, dtype=dtype, blur_sigma=blur_sigma)

    # ------------------------------------------------------------------ parameters and memory
    def _check_params(self) -> None:
        r = self.coreset_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float, np.integer, np.floating)) or not (0 < r <= 1):
            raise ValueError(f"coreset_ratio must be a number in (0, 1], got {r!r}")
        if self.coreset_max is not None and not is_positive_int(self.coreset_max):
            raise ValueError(f"coreset_max must be None or a positive integer, got {self.coreset_max!r}")
        if self.projection_dim is not None and not is_positive_int(self.projection_dim):
            raise ValueError(f"projection_dim must be None or a positive integer, got {self.projection_dim!r}")
        if self.dtype not in BANK_DTYPES:
            raise ValueError(f"dtype must be one of {BANK_DTYPES}, got {self.dtype!r}")
        s = self.blur_sigma
        if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or not (
            np.isfinite(s) and s >= 0
        ):
            raise ValueError(f"blur_sigma must be a finite number >= 0, got {s!r}")

    # ------------------------------------------------------------------ numeric core
    def patch_embeddings(self, features: Features) -> np.ndarray:
        """Locally aware patch features (PatchCore eq. 2-3) of validated input, (n, h, w, d) float32 on ``grid_``."""
        arrays = self._check_score_input(features)
        return self._embed(arrays)

    def _embed(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        parts = [to_grid(box_filter_3x3(arrays[name]), self.grid_) for name in self.levels_]
        return np.concatenate(parts, axis=-1)

    def fit(self, features: Features) -> PatchMemoryDetector:
        """Memory bank of every training patch, reduced by the greedy coreset unless ``coreset_ratio`` is 1."""
        self._check_params()
        arrays = self._check_fit_input(features)
        hw = [self.shapes_[k][:2] for k in self.levels_]
        grid = (min(h for h, _ in hw), min(w for _, w in hw))
        if grid not in hw:  # e.g. one level 16x8, another 8x16: neither is the coarsest
            sizes = {k: self.shapes_[k][:2] for k in self.levels_}
            raise ValueError(f"spatial levels {sizes} have no common coarsest grid (one level is taller, another "
                             "wider): pick levels whose grids nest")
        self.grid_ = grid
        patches = self._embed(arrays)
        patches = patches.reshape(-1, patches.shape[-1])
        total = patches.shape[0]
        n_keep = total if self.coreset_ratio >= 1 else max(1, math.ceil(float(self.coreset_ratio) * total))
        if self.coreset_max is not None and self.coreset_ratio < 1:
            n_keep = min(n_keep, int(self.coreset_max))
        indices = coreset_indices(patches, n_keep, self.seed, self.projection_dim)
        bank = patches[indices].astype(self.dtype)
        self.memory_bank_ = np.ascontiguousarray(bank)
        as32 = self.memory_bank_.astype(np.float32)
        self.memory_sq_norms_ = np.einsum("ij,ij->i", as32, as32)  # of the stored (possibly float16) values
        self.coreset_indices_ = np.asarray(indices, dtype=np.int32)
        return self

    def held_out_models(self, features: Features, folds: Sequence[np.ndarray]) -> Iterator[PatchMemoryDetector]:
        """For each array of training rows (images) in ``folds``, this fit without them: held-out folds' models
        without a coreset selection per fold (see the module docstring for why this holds images out).

        ``features`` are the features it was fitted on. A fold's memory is this memory less the patches of the
        fold's images, plus, farthest first, patches of the other images that only those covered, until the other
        images are covered within this fit's covering radius again (`extend_cover`)."""
        if not self.is_fitted:
            raise ValueError(f"{type(self).__name__} is not fitted yet; call fit() first")
        patches = self._embed(self._check_score_input(features))
        if patches.shape[0] != self.n_train_:
            raise ValueError(f"features of {patches.shape[0]} images, but this model was fitted on {self.n_train_}")
        patches = patches.reshape(-1, patches.shape[-1])
        per_image = self.grid_[0] * self.grid_[1]
        d2, owner = nearest_rows(patches, self.memory_bank_, self.memory_sq_norms_)
        radius2 = float(d2.max())
        memory_image = self.coreset_indices_ // per_image
        for rows in folds:
            rows = np.unique(np.asarray(rows, dtype=np.int64))
            if rows.size and not (0 <= rows[0] and rows[-1] < self.n_train_):
                raise ValueError(f"rows must be training rows in [0, {self.n_train_}), got {rows[0]}..{rows[-1]}")
            held = np.isin(memory_image, rows)
            # The other images' patches whose nearest memory patch goes with the fold: the only ones it uncovers.
            uncovered = np.flatnonzero(held[owner] & ~np.isin(np.arange(len(patches)) // per_image, rows))
            kept = self.memory_bank_[~held]
            kept_sq = self.memory_sq_norms_[~held]
            gap = nearest_rows(patches[uncovered], kept, kept_sq)[0] if len(kept) else np.full(len(uncovered), np.inf)
            added = uncovered[extend_cover(patches[uncovered], gap, radius2)]
            extra = patches[added].astype(self.dtype)
            fold = copy.copy(self)
            fold.memory_bank_ = np.concatenate([kept, extra])
            as32 = extra.astype(np.float32)
            fold.memory_sq_norms_ = np.concatenate([kept_sq, np.einsum("ij,ij->i", as32, as32)])
            fold.coreset_indices_ = np.concatenate([self.coreset_indices_[~held], added]).astype(np.int32)
            fold.n_train_ = self.n_train_ - rows.size
            yield fold

    def _patch_scores(self, features: Features) -> np.ndarray:
        """Nearest-memory distance of every patch, (n, h, w) float32, unblurred."""
        emb = self.patch_embeddings(features)
        n, h, w, d = emb.shape
        dist = nearest_distances(emb.reshape(-1, d), self.memory_bank_, self.memory_sq_norms_)
        return dist.reshape(n, h, w)

    def score_and_heatmaps(self, features: Features) -> tuple[np.ndarray, np.ndarray]:
        """``score_samples`` and ``heatmaps`` from one search (what a camera raising an alert needs)."""
        raw = self._patch_scores(features)
        return max_over_locations(raw), blur_maps(raw, self.blur_sigma)

    def heatmaps(self, features: Features) -> np.ndarray:
        """Nearest-memory patch distances on the grid, (n, h, w) float32, blurred by ``blur_sigma`` cells."""
        return blur_maps(self._patch_scores(features), self.blur_sigma)

    def score_samples(self, features: Features) -> np.ndarray:
        """Largest patch distance per image (PatchCore eq. 6, without the eq. 7 reweighting), float64."""
        return max_over_locations(self._patch_scores(features))

    # ------------------------------------------------------------------ persistence
    def _get_map_arrays(self) -> dict[str, np.ndarray]:
        return {
            "memory_bank": self.memory_bank_,
            "memory_sq_norms": self.memory_sq_norms_,
            "coreset_indices": self.coreset_indices_,
        }

    def _set_map_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        bank = np.ascontiguousarray(arrays["memory_bank"])
        norms = np.ascontiguousarray(arrays["memory_sq_norms"], dtype=np.float32)
        if bank.ndim != 2 or norms.shape != (bank.shape[0],):
            raise ValueError(f"memory bank {bank.shape} and its norms {norms.shape} do not match")
        self.memory_bank_ = bank
        self.memory_sq_norms_ = norms
        self.coreset_indices_ = np.asarray(arrays["coreset_indices"])
