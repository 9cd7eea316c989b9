"""How many distinct parts a set of good frames shows: the same part seen twice is one part, not two.

A retrain shown one part ten times learns that part's every scratch and grain as "good" and rejects every other
part. Byte-identical frames (a frozen stream) are easy; a re-triggered camera on a part that did not move gives
frames that differ only by sensor noise. A raw pixel-difference threshold cannot tell those from two different
parts in a fixture, because how far apart two real parts are depends on the part type (screws on a plate, solar
cells, bottles...) and nobody tunes it per type. So the rule is noise-aware: two frames are the same part when
their difference is explained by their own sensor noise.

The rule, per pair of frames of the same size:

- Each frame is sampled on a grid of pixels (every ``stride``-th row and column, grey = mean of the channels).
  The samples are *decimated, not averaged*, so their noise is the full-resolution per-pixel noise, and that is
  what the noise estimate measures: Immerkaer's 3x3 mask ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (it cancels any
  locally planar scene; its weights' squares sum to 36, so the response to white noise of std sigma has std
  6*sigma) evaluated at the sampled pixels, sigma = median(|response|) / (0.6745 * 6). The median, not the mean,
  so that the scene's edges (a minority of the pixels) do not count as noise.
- The grid is cut into ``TILES`` x ``TILES`` tiles and both the noise and the difference are taken per tile:
  noise grows with brightness (shot noise), and two parts in the same fixture differ only where the part is, so a
  whole-frame RMS would dilute a screw's difference into a plate's noise. Per tile,
  ``ratio = RMS(a - b) / sqrt(sigma_a^2 + sigma_b^2 + q)``, with ``q = 2/12`` the quantisation noise of two 8-bit
  frames (a noise-free rendered frame still rounds). For two frames of the same scene with independent noise
  this ratio is 1 up to the estimates' scatter (about 96*96 samples, some 140 per tile: RMS within about 6%, the
  MAD-based sigma within about 10%); the largest of 64 such tiles stays below about 1.3. A scene whose texture
  leaks into the noise estimate only makes sigma larger, which lowers the ratio of a true duplicate further.
- The pair's statistic is the largest tile ratio; the pair is the same part when it is at most
  ``SAME_PART_RATIO`` = 2: the difference is at most twice what the noise explains, anywhere in the frame. That is
  the scatter bound above (1.3) with a margin of 1.5x. Measured (20-30 train/good images per set, all pairs):
  the smallest ratio between two distinct parts was 9.0 (elpv mono), 14.6 (screw), 14.7 (elpv poly), 17.9
  (bottle), 39.7 (juice bottle); the largest between noisy copies of one image (sigma 0.5 to 8 grey levels per
  channel) 1.31. A part moved by one pixel is a different frame (ratio 3.6 to 15): a re-triggered camera does not
  move the part, and a re-placed part is not counted as the same one.
- A frame whose noise is not small next to its own contrast (noise sigma above a quarter of the frame's standard
  deviation: random texture, a badly under-exposed frame) cannot be told from another by this rule, since
  anything "is explained by noise"; such a frame is never called a duplicate.

Duplicates are grouped transitively (union-find): A~B and B~C make one part, even if A and C drifted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

SAME_PART_RATIO = 2.0
TILES = 8
SAMPLES = 96 * 96
MIN_TILE_SAMPLES = 32
MIN_SNR = 4.0
_QUANT_VAR = 2.0 / 12.0
_MAD_TO_SIGMA = 1.0 / (0.6745 * 6.0)
_MASK = ((1, -2, 1), (-2, 4, -2), (1, -2, 1))


@dataclass(frozen=True)
class FrameSamples:
    """One frame's grey samples and per-tile noise, ready to compare."""

    shape: tuple[int, ...]
    values: np.ndarray  # (tiles, n) float64 grey samples, tile by tile
    valid: np.ndarray  # (tiles, n) bool: the sample is not clipped (no channel at the dtype's ends)
    noise_var: np.ndarray  # (tiles,) per-pixel noise variance of each tile (0 where it has no unclipped sample)
    noise: float  # the frame's noise sigma (median over its tiles)
    contrast: float  # the frame's grey standard deviation

    @property
    def judgeable(self) -> bool:
        return self.noise * MIN_SNR <= self.contrast


@dataclass
class DistinctParts:
    """``n_frames`` frames show ``n_parts`` distinct parts; ``groups`` lists the frames of each part (in order of
    first appearance); ``pairs`` the duplicate pairs found, with their ratio."""

    n_frames: int
    n_parts: int
    groups: list[list[int]]
    pairs: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def repeated(self) -> list[list[int]]:
        return [g for g in self.groups if len(g) > 1]


def _tiles(a: np.ndarray, t: int) -> np.ndarray:
    h, w = a.shape
    th, tw = h // t, w // t
    return a[:th * t, :tw * t].reshape(t, th, t, tw).transpose(0, 2, 1, 3).reshape(t * t, th * tw)


def frame_samples(im: np.ndarray) -> FrameSamples | None:
    """Grey samples on a decimated grid and the noise there (see the module's docstring); None when the frame is
    too small to be cut into tiles of about 2*MIN_TILE_SAMPLES samples, or too clipped to estimate its noise.

    A sample with a channel at the ends of its range (0 or 255 for 8 bits) is clipped: its noise is cut off, so
    it is left out of the noise estimate (with its 3x3 neighbours' responses) and of every difference.
    """
    im = np.asarray(im)
    h, w = im.shape[:2]
    if h < 3 or w < 3:
        return None
    stride = max(1, int(np.sqrt((h - 2) * (w - 2) / SAMPLES)))
    ny, nx = (h - 2 + stride - 1) // stride, (w - 2 + stride - 1) // stride
    t = min(TILES, int(np.sqrt(ny * nx / (2 * MIN_TILE_SAMPLES))), min(ny, nx) // 2)
    if t < 1:
        return None
    lo, hi = (0, np.iinfo(im.dtype).max) if np.issubdtype(im.dtype, np.integer) else (0.0, 255.0)
    # The 3x3 neighbourhood of every sampled pixel, gathered once: (ny, 3, nx, 3[, channels]).
    rows = (np.arange(ny)[:, None] * stride + np.arange(3)[None, :]).ravel()
    cols = (np.arange(nx)[:, None] * stride + np.arange(3)[None, :]).ravel()
    block = im.take(rows, axis=0).take(cols, axis=1)
    if block.ndim == 3:
        n_ch = block.shape[2]
        ends = (block <= lo) | (block >= hi)
        grey = block[..., 0].astype(np.float32)
        cut = ends[..., 0].copy()
        for c in range(1, n_ch):
            grey += block[..., c]
            cut |= ends[..., c]
        grey /= n_ch
    else:
        grey = block.astype(np.float32)
        cut = (block <= lo) | (block >= hi)
    grey = grey.reshape(ny, 3, nx, 3)
    cut = cut.reshape(ny, 3, nx, 3)
    response = np.zeros((ny, nx), np.float32)
    clipped_near = np.zeros((ny, nx), bool)
    for dy in range(3):
        for dx in range(3):
            response += _MASK[dy][dx] * grey[:, dy, :, dx]
            clipped_near |= cut[:, dy, :, dx]
    centre, clipped = grey[:, 1, :, 1], cut[:, 1, :, 1]
    assert centre is not None and clipped is not None
    values = _tiles(centre, t).astype(np.float64)
    valid = ~_tiles(clipped, t)
    # Per tile, the median |response| over the unclipped neighbourhoods: sort with the clipped ones last.
    r = np.where(_tiles(clipped_near, t), np.inf, np.abs(_tiles(response, t)))
    r.sort(axis=1)
    n_ok = np.isfinite(r).sum(axis=1)
    sigma = r[np.arange(len(r)), np.maximum(n_ok - 1, 0) // 2] * _MAD_TO_SIGMA
    # The frame's noise (median over tiles with enough unclipped neighbourhoods) is a floor for every tile: near
    # the ends of the range (a dark background) clipping cuts the noise and the unclipped neighbourhoods left are
    # a biased few, so a tile's own estimate there is too low. A floor can only make a duplicate look more alike.
    ok = n_ok >= MIN_TILE_SAMPLES
    if not ok.any():
        return None  # no noise estimate: nothing to judge a pair by
    noise = float(np.median(sigma[ok]))
    sigma = np.maximum(np.where(ok, sigma, noise), noise)
    contrast = float(centre[~clipped].std()) if (~clipped).any() else 0.0
    return FrameSamples(im.shape, values, valid, sigma ** 2, noise, contrast)


def pair_ratio(a: FrameSamples, b: FrameSamples) -> float:
    """The largest per-tile RMS difference over the noise-explained RMS (1 for the same scene, more for two), over
    the tiles with at least MIN_TILE_SAMPLES samples unclipped in both frames; infinite (not judged the same) when
    there is none."""
    return float(_ratios([a, b])[0, 1])


def _ratios(samples: Sequence[FrameSamples]) -> np.ndarray:
    """All pairs' ratios at once (the frames must share a shape): per tile, the masked sums of squared differences
    come from three batched matrix products instead of a loop over pairs."""
    v = np.stack([s.values for s in samples], axis=1)  # (tiles, N, n)
    m = np.stack([s.valid for s in samples], axis=1).astype(np.float64)
    vm = v * m
    v2m = v * vm
    cross = vm @ vm.transpose(0, 2, 1)
    sq = v2m @ m.transpose(0, 2, 1)
    count = m @ m.transpose(0, 2, 1)
    ssd = np.maximum(sq + sq.transpose(0, 2, 1) - 2 * cross, 0.0)  # (tiles, N, N)
    nv = np.stack([s.noise_var for s in samples], axis=1)  # (tiles, N)
    explained = nv[:, :, None] + nv[:, None, :] + _QUANT_VAR
    ratio2 = np.where(count >= MIN_TILE_SAMPLES, ssd / np.maximum(count, 1) / explained, -np.inf)
    worst = ratio2.max(axis=0)
    return np.sqrt(np.where(np.isfinite(worst), worst, np.inf))


def distinct_parts(images: Sequence[np.ndarray], same_part_ratio: float = SAME_PART_RATIO) -> DistinctParts:
    """Count the distinct parts among ``images`` (grey or RGB, any dtype of 0..255 values), grouping frames whose
    difference is explained by their noise (see the module's docstring)."""
    samples = [frame_samples(np.asarray(im)) for im in images]
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, smp in enumerate(samples):
        if smp is not None and smp.judgeable:
            by_shape.setdefault(smp.shape, []).append(i)
    for idx in by_shape.values():
        if len(idx) < 2:
            continue
        ratios = _ratios([samples[i] for i in idx])  # type: ignore[misc]
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                if ratios[a, b] <= same_part_ratio:
                    i, j = idx[a], idx[b]
                    pairs.append((i, j, float(ratios[a, b])))
                    ri, rj = root(i), root(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(images)):
        groups.setdefault(root(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: g[0])
    return DistinctParts(len(images), len(ordered), ordered, pairs)
