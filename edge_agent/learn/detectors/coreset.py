"""Greedy k-center coreset: a few rows of a large point set that cover all of it (PatchCore's memory subsampling).

A sampler of its own, beside the Gaussian statistics (`edge_agent.learn.detectors.gaussian`), so that any detector
that keeps a memory of training vectors can shrink it the same way; the patch memory
(`edge_agent.learn.detectors.patch_memory`) is the first user. Pure numpy, no I/O.

References
----------
* K. Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022 (Sec. 3.2, Alg. 1).
* O. Sener, S. Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set Approach", ICLR 2018.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.learn.detectors.base import is_positive_int


def coreset_indices(points: np.ndarray, n_select: int, seed: int, projection_dim: int | None = None) -> np.ndarray:
    """Indices of ``n_select`` rows of ``points`` (n, d) by `greedy_coreset`, reproducible for a seed.

    The seed draws the first point and, when ``projection_dim`` is below d, a Gaussian random projection to that
    many dimensions (Johnson-Lindenstrauss) on which the selection's distances are computed: PatchCore's
    speed-up; the caller keeps the full vectors of the rows selected. All rows (in order) when ``n_select`` is
    at least n.
    """
    X = np.asarray(points)
    total = X.shape[0]
    if n_select >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(total))
    d = X.shape[1]
    if projection_dim is not None and int(projection_dim) < d:
        k = int(projection_dim)
        projection = rng.normal(0.0, 1.0 / math.sqrt(k), size=(d, k)).astype(np.float32)
        X = X @ projection
    return greedy_coreset(X, n_select, start)


def greedy_coreset(points: np.ndarray, n_select: int, start: int = 0, cells: int = 128) -> np.ndarray:
    """Greedy k-center coreset (PatchCore, Roth et al. 2022, Alg. 1; Sener & Savarese 2018): indices of
    ``n_select`` rows of ``points``, in selection order, beginning with ``start``.

    Each step adds the point farthest from everything selected so far, i.e. the one whose nearest selected
    point is farthest (it maximises the coverage gain, minimising max_i min_j ||x_i - c_j||). Only one vector
    of squared distances to the current coreset is kept and updated with the distances to the newest point,
    computed as ||x||^2 - 2 x.c + ||c||^2 with one matrix-vector product: O(P * d) work per step and no P x P
    matrix. Selected points are marked so that none is picked twice even among duplicate rows. Computes in
    float64 for float64 input, float32 otherwise.

    Pruning (the same selection, fewer distances): the first ``cells`` points selected split the rows into cells,
    each row in the cell of the one it is nearest to. A later point c cannot bring any row of cell b closer than
    it already is when ||c - centre_b|| - radius_b exceeds the cell's largest current distance (triangle
    inequality), and such cells are skipped, with a margin well above the float32 rounding of a distance. Few-shot
    patches are clustered (the same part turned eleven times), so after the first cells most of them are: the
    patch memory's selection then updates a few percent of the rows per step instead of all of them.

    The matrix-vector products go through ``np.einsum`` (single-threaded SIMD), not BLAS. A multi-threaded
    OpenBLAS wakes its threads for each of the thousands of small products; on a busy 2-core machine that
    was measured 10-20x slower (21560 x 120, 10 %: 7.8 s against 0.6-1.1 s). `edge_agent` pins OpenBLAS to
    one thread, but only when it is imported before numpy; einsum does not depend on import order, BLAS build
    or thread count (so the same features select the same coreset anywhere), at about 1.4x the time of a
    single-threaded BLAS product.
    """
    X = np.asarray(points)
    dtype = np.float64 if X.dtype == np.float64 else np.float32
    X = np.ascontiguousarray(X, dtype=dtype)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (n, d) array, got shape {X.shape}")
    n = X.shape[0]
    if not is_positive_int(n_select) or n_select > n:
        raise ValueError(f"n_select must be an integer in [1, {n}], got {n_select!r}")
    if not (isinstance(start, (int, np.integer)) and 0 <= start < n):
        raise ValueError(f"start must be an index in [0, {n}), got {start!r}")
    if not is_positive_int(cells):
        raise ValueError(f"cells must be a positive integer, got {cells!r}")
    sq = np.einsum("ij,ij->i", X, X)
    min_d2 = np.full(n, np.inf, dtype=dtype)
    buf = np.empty(n, dtype=dtype)
    nearest = np.zeros(n, dtype=np.int64)  # which of the first `cells` selected points each row is nearest to
    selected = np.empty(int(n_select), dtype=np.int64)
    current = int(start)
    n_cells = min(int(cells), int(n_select))  # pruning starts once the cells are drawn, if ever
    for t in range(n_cells):
        selected[t] = current
        np.einsum("ij,j->i", X, X[current] * dtype(-2.0), out=buf)
        buf += sq
        buf += sq[current]
        nearest[buf < min_d2] = t
        np.minimum(min_d2, buf, out=min_d2)
        min_d2[current] = -np.inf  # never again, whatever rounding says
        current = int(np.argmax(min_d2))
    if n_cells < n_select:
        selected[n_cells:] = _pruned_steps(X, sq, min_d2, nearest, selected[:n_cells], current, int(n_select) - n_cells)
    return selected


def _pruned_steps(
    X: np.ndarray, sq: np.ndarray, min_d2: np.ndarray, nearest: np.ndarray, centres: np.ndarray, current: int,
    steps: int,
) -> np.ndarray:
    """`greedy_coreset`'s remaining ``steps`` selections, beginning with ``current``, updating only the cells
    that the newest point can reach (rows of a cell stored together, so each update is one contiguous product)."""
    dtype = X.dtype.type
    order = np.argsort(nearest, kind="stable")
    bounds = np.searchsorted(nearest[order], np.arange(len(centres) + 1))
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    X, sq, min_d2 = X[order], sq[order], min_d2[order]
    # Margin for rounding: a squared distance computed in float32 is off by ~1e-6 x the largest ||x||^2 at most.
    tol = 1e-5 * float(sq.max())
    cell_max = np.array([min_d2[lo:hi].max() if hi > lo else -np.inf for lo, hi in zip(bounds[:-1], bounds[1:])])
    radius = np.sqrt(np.maximum(cell_max, 0.0) + tol)  # every row lies within its centre's radius from now on
    filled = bounds[1:] > bounds[:-1]  # a centre duplicating an earlier one is nearest to no row
    C = X[position[centres]].astype(np.float64)
    c_sq = np.einsum("ij,ij->i", C, C)
    out = np.empty(steps, dtype=np.int64)
    for t in range(steps):
        out[t] = current
        p = int(position[current])
        c = X[p]
        c64 = c.astype(np.float64)
        gap = np.sqrt(np.maximum(c_sq - 2.0 * np.einsum("ij,j->i", C, c64) + float(c64 @ c64), 0.0))
        gap -= radius
        reach = filled & ((gap <= 0) | (gap * gap <= cell_max + tol))
        v = c * dtype(-2.0)
        for b in np.flatnonzero(reach):
            lo, hi = bounds[b], bounds[b + 1]
            part = np.einsum("ij,j->i", X[lo:hi], v)
            part += sq[lo:hi]
            part += sq[p]
            np.minimum(min_d2[lo:hi], part, out=min_d2[lo:hi])
            cell_max[b] = min_d2[lo:hi].max()
        min_d2[p] = -np.inf
        b = int(nearest[current])
        cell_max[b] = min_d2[bounds[b]:bounds[b + 1]].max()
        current = _first_farthest(min_d2, cell_max, bounds, order)
    return out


def _first_farthest(min_d2: np.ndarray, cell_max: np.ndarray, bounds: np.ndarray, order: np.ndarray) -> int:
    """The original index of the farthest row, the lowest one among ties (as ``np.argmax`` picks before the
    rows were grouped into cells), looking only inside the cells that hold the largest distance."""
    top = cell_max.max()
    rows = [lo + np.flatnonzero(min_d2[lo:hi] == top) for lo, hi in
            ((bounds[b], bounds[b + 1]) for b in np.flatnonzero(cell_max == top))]
    return int(order[np.concatenate(rows)].min())


def extend_cover(points: np.ndarray, min_d2: np.ndarray, radius2: float) -> np.ndarray:
    """Greedy k-center continued from an existing selection: indices of rows of ``points`` added, farthest first,
    until every row's squared distance to the selection (``min_d2``, inf for none) is at most ``radius2``.

    Why: a held-out fold's patch memory loses the held-out images' patches; the other images' patches that those
    covered are left farther from the memory than the fit's own covering radius, and this puts them back within
    it, as a selection made without the held-out images would have covered them.
    """
    X = np.ascontiguousarray(points, dtype=np.float32)
    d2 = np.array(min_d2, dtype=np.float32)
    sq = np.einsum("ij,ij->i", X, X)
    buf = np.empty_like(d2)
    added = []
    while d2.size:
        j = int(np.argmax(d2))
        if d2[j] <= radius2:
            break
        added.append(j)
        np.einsum("ij,j->i", X, X[j] * np.float32(-2.0), out=buf)
        buf += sq
        buf += sq[j]
        np.minimum(d2, buf, out=d2)
        d2[j] = -np.inf
    return np.asarray(added, dtype=np.int64)
