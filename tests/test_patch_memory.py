"""PatchMemoryDetector (PatchCore-style patch memory bank): references, coreset, localisation, errors, files,
and real images (`real_set`) through the shipped int8 model."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import uniform_filter
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from edge_agent.capture.images import read_image
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.augment import PRESETS, augment
from edge_agent.learn.detectors import persistence
from edge_agent.learn.detectors.coreset import extend_cover, greedy_coreset
from edge_agent.learn.detectors.patch_memory import PatchMemoryDetector, box_filter_3x3, to_grid
from edge_agent.offline.metrics import roc_auc
from tests.synthetic import spatial

MODEL_SHA = "cd" * 32


def reference_patches(feats: dict[str, np.ndarray], step3: slice = slice(1, None, 2)) -> np.ndarray:
    """Independent patch features: scipy 3x3 mean with zeros outside the map (mode='constant'), stage 3 subsampled."""
    s3 = uniform_filter(feats["spatial/stage3"].astype(np.float64), size=(1, 3, 3, 1), mode="constant", cval=0.0)
    s4 = uniform_filter(feats["spatial/stage4"].astype(np.float64), size=(1, 3, 3, 1), mode="constant", cval=0.0)
    return np.concatenate([s3[:, step3, step3], s4], axis=-1)


def naive_greedy(X: np.ndarray, n_select: int, start: int) -> list[int]:
    """Textbook k-center greedy: recompute all distances to the selected set at every step."""
    selected = [start]
    while len(selected) < n_select:
        d = cdist(X, X[selected]).min(axis=1)
        d[selected] = -1.0
        selected.append(int(np.argmax(d)))
    return selected


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ---------------------------------------------------------------- numeric core


def test_box_filter_and_grid_alignment_match_scipy(rng: np.random.Generator) -> None:
    x = rng.normal(size=(3, 9, 7, 5)).astype(np.float32)
    ref = uniform_filter(x.astype(np.float64), size=(1, 3, 3, 1), mode="constant", cval=0.0)
    np.testing.assert_allclose(box_filter_3x3(x), ref, rtol=1e-5, atol=1e-6)
    # 28 -> 14 keeps odd cells (centres of a SAME stride-2 conv on an even map), 33 -> 17 even cells, 29 -> 14 odd.
    assert np.array_equal(to_grid(np.arange(28.0).reshape(1, 28, 1, 1) * np.ones((1, 1, 28, 1)), (14, 14))[0, :, 0, 0],
                          np.arange(1, 28, 2))
    m = np.arange(33.0)[None, :, None, None] * np.ones((1, 1, 33, 1))
    assert np.array_equal(to_grid(m, (17, 17))[0, :, 0, 0], np.arange(0, 33, 2))
    m = np.arange(29.0)[None, :, None, None] * np.ones((1, 1, 29, 1))
    assert np.array_equal(to_grid(m, (14, 14))[0, :, 0, 0], np.arange(1, 29, 2))
    # Other ratios: area resize to the grid.
    assert to_grid(rng.normal(size=(2, 20, 20, 3)).astype(np.float32), (8, 8)).shape == (2, 8, 8, 3)


def test_greedy_coreset_equals_naive_reference(rng: np.random.Generator) -> None:
    X = rng.normal(size=(300, 12))
    for start in (0, 17, 299):
        fast = greedy_coreset(X, 40, start)
        assert fast.tolist() == naive_greedy(X, 40, start)
    # float32 input runs in float32 and still agrees on well-separated random data.
    assert greedy_coreset(X.astype(np.float32), 25, 5).tolist() == naive_greedy(X, 25, 5)
    # Duplicate rows: never the same index twice, even when asked for every point.
    dup = np.repeat(rng.normal(size=(5, 3)), 4, axis=0)
    idx = greedy_coreset(dup, 20, 0)
    assert sorted(idx.tolist()) == list(range(20))
    assert len({tuple(r) for r in dup[idx[:5]]}) == 5  # the 5 distinct rows come first
    with pytest.raises(ValueError, match="n_select"):
        greedy_coreset(X, 301)
    with pytest.raises(ValueError, match="start"):
        greedy_coreset(X, 3, start=300)


def test_pruned_greedy_coreset_selects_what_the_unpruned_one_selects(rng: np.random.Generator) -> None:
    # Clustered like augmented copies of a few parts (where the pruning skips most cells), plus duplicate rows
    # (ties: the lowest index wins, as np.argmax picks) and a selection long enough to run out of distinct rows.
    centres = rng.normal(scale=20.0, size=(12, 6))
    X = np.concatenate([c + rng.normal(scale=0.5, size=(40, 6)) for c in centres])
    X = np.concatenate([X, X[::7]])
    for data in (X, X.astype(np.float32)):
        for cells in (1, 4, 16):
            pruned = greedy_coreset(data, 200, 3, cells=cells)
            np.testing.assert_array_equal(pruned, greedy_coreset(data, 200, 3, cells=200))
    assert greedy_coreset(X, 120, 3, cells=8).tolist() == naive_greedy(X, 120, 3)
    everything = greedy_coreset(X, len(X), 0, cells=5)
    assert sorted(everything.tolist()) == list(range(len(X)))
    with pytest.raises(ValueError, match="cells"):
        greedy_coreset(X, 10, cells=0)


def test_extend_cover_continues_the_greedy_selection_until_the_radius(rng: np.random.Generator) -> None:
    X = rng.normal(size=(200, 5)).astype(np.float32)
    order = greedy_coreset(X, 200, 0)
    added = extend_cover(X, np.full(200, np.inf), 1.0)  # from nothing: the greedy order, cut at the radius
    np.testing.assert_array_equal(added, order[: len(added)])
    assert cdist(X, X[added]).min(axis=1).max() <= 1.0 + 1e-4 < cdist(X, X[added[:-1]]).min(axis=1).max()
    covered = cdist(X, X[order[:30]]).min(axis=1) ** 2  # from a selection: only what it leaves beyond the radius
    more = extend_cover(X, covered, 0.8)
    assert not np.isin(more, order[:30]).any()
    assert cdist(X, X[np.r_[order[:30], more]]).min(axis=1).max() ** 2 <= 0.8 + 1e-4
    assert len(extend_cover(X, covered, float(covered.max()))) == 0


def test_greedy_coreset_covers_better_than_random(rng: np.random.Generator) -> None:
    # Clustered data: a random subset misses small clusters; the k-center coreset does not.
    centres = rng.normal(scale=10.0, size=(30, 8))
    sizes = np.r_[np.full(5, 400), np.full(25, 8)]
    X = np.concatenate([c + rng.normal(size=(s, 8)) for c, s in zip(centres, sizes)])
    k = 60
    core = greedy_coreset(X, k, 0)
    rand = rng.choice(len(X), size=k, replace=False)

    def radius(idx: np.ndarray) -> float:
        return float(cdist(X, X[idx]).min(axis=1).max())

    assert radius(core) < 0.5 * radius(rand)


# ---------------------------------------------------------------- detector


def test_exact_mode_equals_sklearn_nearest_neighbours(rng: np.random.Generator) -> None:
    train, test = spatial(rng, 12), spatial(rng, 5)
    det = PatchMemoryDetector(coreset_ratio=1.0, blur_sigma=0).fit(train)
    assert det.grid_ == (8, 8)
    assert det.memory_bank_.shape == (12 * 64, 8 + 16) and det.memory_bank_.dtype == np.float32
    assert det.coreset_indices_.tolist() == list(range(12 * 64))
    ref_train = reference_patches(train).reshape(-1, 24)
    ref_test = reference_patches(test)
    np.testing.assert_allclose(det.patch_embeddings(test), ref_test, rtol=1e-5, atol=1e-5)
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(ref_train)
    dist = nn.kneighbors(ref_test.reshape(-1, 24))[0][:, 0].reshape(5, 8, 8)
    maps = det.heatmaps(test)
    assert maps.shape == (5, 8, 8) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, dist, rtol=1e-4, atol=1e-4)
    scores = det.score_samples(test)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, dist.reshape(5, -1).max(axis=1), rtol=1e-4)
    # A training image is its own nearest neighbour: every patch at distance ~0 (clamped, never NaN).
    own = det.heatmaps({k: v[:2] for k, v in train.items()})
    assert np.all(np.isfinite(own)) and own.max() < 1e-2


def test_coreset_bank_is_selected_training_patches(rng: np.random.Generator) -> None:
    train = spatial(rng, 20)  # 20 x 64 = 1280 patches
    det = PatchMemoryDetector(coreset_ratio=0.1, projection_dim=None, seed=3).fit(train)
    patches = det.patch_embeddings(train).reshape(-1, 24)
    assert det.memory_bank_.shape == (math.ceil(0.1 * 1280), 24)
    idx = det.coreset_indices_
    assert idx.dtype == np.int32 and len(set(idx.tolist())) == len(idx)
    np.testing.assert_array_equal(det.memory_bank_, patches[idx])
    # Without projection the selection is exactly the greedy coreset from the seeded start point.
    start = int(np.random.default_rng(3).integers(1280))
    assert idx.tolist() == greedy_coreset(patches, len(idx), start).tolist()
    np.testing.assert_allclose(det.memory_sq_norms_, (det.memory_bank_.astype(np.float64) ** 2).sum(1), rtol=1e-5)
    # Same seed, same model; a projection (here 24 -> 8 dims) changes the selection but not its size.
    again = PatchMemoryDetector(coreset_ratio=0.1, projection_dim=None, seed=3).fit(train)
    np.testing.assert_array_equal(again.memory_bank_, det.memory_bank_)
    proj = PatchMemoryDetector(coreset_ratio=0.1, projection_dim=8, seed=3).fit(train)
    assert proj.memory_bank_.shape == det.memory_bank_.shape
    assert PatchMemoryDetector(coreset_ratio=0.5, coreset_max=50).fit(train).memory_bank_.shape == (50, 24)
    assert det.nbytes_ == det.memory_bank_.nbytes + det.memory_sq_norms_.nbytes + idx.nbytes + 16
    half = PatchMemoryDetector(coreset_ratio=0.1, dtype="float16").fit(train)
    assert half.memory_bank_.dtype == np.float16 and half.nbytes_ < det.nbytes_
    # Coreset scores stay close to the exact ones on held-out data (every kept patch is also in the full bank).
    test = spatial(rng, 6)
    exact = PatchMemoryDetector(coreset_ratio=1.0).fit(train).score_samples(test)
    approx = PatchMemoryDetector(coreset_ratio=0.25).fit(train).score_samples(test)
    assert np.all(approx >= exact - 1e-5) and np.all(approx <= exact * 1.5)


def test_finds_injected_local_anomaly(rng: np.random.Generator) -> None:
    det = PatchMemoryDetector(coreset_ratio=0.25).fit(spatial(rng, 40))
    good = spatial(rng, 10)
    bad = spatial(rng, 1)
    # A look that no good patch has anywhere (a memory bank is position-agnostic: a shift along the good
    # pattern's own direction would just resemble another location): channel contrast on 2x2 stage-3 cells,
    # which lands on grid cells y 5-6, x 1-2 (grid cell i is centred on stage-3 cell 2i + 1).
    bad["spatial/stage3"][0, 11:13, 4:6, :] += np.float32(2.5) * np.r_[np.ones(4), -np.ones(4)].astype(np.float32)
    scores, maps = det.score_and_heatmaps(bad)
    assert maps.shape == (1, 8, 8) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, det.heatmaps(bad))
    np.testing.assert_array_equal(scores, det.score_samples(bad))
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 5 <= y <= 6 and 1 <= x <= 2, (y, x)
    assert scores[0] > det.score_samples(good).max()
    raw = PatchMemoryDetector(coreset_ratio=0.25, blur_sigma=0).fit(spatial(rng, 40)).heatmaps(bad)
    assert maps.std() < raw.std()  # the blur smooths the heat map


def test_lite2_geometry(rng: np.random.Generator) -> None:
    # EfficientNet-Lite2 at 260 px: 33x33x48 + 17x17x88 -> 17x17 grid of 136-dim patches, stage 3 at [::2].
    feats = {
        "spatial/stage3": rng.normal(size=(3, 33, 33, 48)).astype(np.float32),
        "spatial/stage4": rng.normal(size=(3, 17, 17, 88)).astype(np.float32),
    }
    det = PatchMemoryDetector(coreset_ratio=0.1).fit(feats)
    assert det.grid_ == (17, 17) and det.memory_bank_.shape == (math.ceil(0.1 * 3 * 289), 136)
    np.testing.assert_allclose(det.patch_embeddings(feats), reference_patches(feats, slice(0, None, 2)), atol=1e-5)
    assert det.heatmaps({k: v[:1] for k, v in feats.items()}).shape == (1, 17, 17)


def test_errors(rng: np.random.Generator) -> None:
    good = spatial(rng, 6)
    for bad_params, match in [
        ({"coreset_ratio": 0.0}, "coreset_ratio"),
        ({"coreset_ratio": 1.5}, "coreset_ratio"),
        ({"coreset_ratio": True}, "coreset_ratio"),
        ({"coreset_max": 0}, "coreset_max"),
        ({"projection_dim": 2.5}, "projection_dim"),
        ({"dtype": "int8"}, "dtype"),
        ({"blur_sigma": -1.0}, "blur_sigma"),
        ({"blur_sigma": float("nan")}, "blur_sigma"),
    ]:
        with pytest.raises(ValueError, match=match):
            PatchMemoryDetector(**bad_params).fit(good)
    with pytest.raises(ValueError, match="no 'spatial/\\*' feature levels"):
        PatchMemoryDetector().fit({"pooled/stage4": rng.normal(size=(6, 10))})
    with pytest.raises(ValueError, match="are not 'spatial/\\*' levels"):
        PatchMemoryDetector(levels=("pooled/stage4",)).fit(good)
    with pytest.raises(ValueError, match="at least 2 samples"):
        PatchMemoryDetector().fit(spatial(rng, 1))
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        PatchMemoryDetector().fit({**good, "spatial/stage4": good["spatial/stage4"][:4]})
    with pytest.raises(ValueError, match="no common coarsest grid"):
        PatchMemoryDetector().fit({"spatial/a": np.zeros((4, 16, 8, 2)), "spatial/b": np.zeros((4, 8, 16, 2))})
    with pytest.raises(ValueError, match="not fitted"):
        PatchMemoryDetector().score_samples(good)

    det = PatchMemoryDetector().fit(good)
    with pytest.raises(ValueError, match="missing feature levels.*spatial/stage4"):
        det.score_samples({"spatial/stage3": good["spatial/stage3"]})
    wider = {**good, "spatial/stage4": np.concatenate([good["spatial/stage4"]] * 2, axis=-1)}
    with pytest.raises(ValueError, match="spatial/stage4.*per-sample shape"):
        det.heatmaps(wider)
    larger = {**good, "spatial/stage3": np.zeros((6, 18, 18, 8), np.float32)}
    with pytest.raises(ValueError, match="spatial/stage3.*per-sample shape"):
        det.score_samples(larger)
    nan = {k: v.copy() for k, v in good.items()}
    nan["spatial/stage3"].flat[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.score_samples(nan)
    # Only the fitted levels are read; a narrower fit ignores the rest.
    only4 = PatchMemoryDetector(levels=("spatial/stage4",)).fit(good)
    assert only4.grid_ == (8, 8) and only4.memory_bank_.shape[1] == 16
    assert only4.score_samples({"spatial/stage4": good["spatial/stage4"]}).shape == (6,)


def test_persistence_round_trip(rng: np.random.Generator, tmp_path: Path) -> None:
    train, test = spatial(rng, 10), spatial(rng, 4)
    for params in ({"coreset_ratio": 0.2, "seed": 5, "levels": ("spatial/stage3", "spatial/stage4")},
                   {"coreset_ratio": 1.0, "dtype": "float16", "blur_sigma": 0.0, "coreset_max": 300}):
        det = PatchMemoryDetector(**params).fit(train)
        path = persistence.save_detector(tmp_path / "patch.bin", det, {"model_sha256": MODEL_SHA})
        loaded, meta = persistence.load_detector(path, expected_model_sha256=MODEL_SHA)
        assert type(loaded) is PatchMemoryDetector and meta["model_sha256"] == MODEL_SHA
        assert loaded.get_params() == det.get_params()
        assert loaded.levels_ == det.levels_ and loaded.shapes_ == det.shapes_ and loaded.grid_ == det.grid_
        assert loaded.n_train_ == 10 and loaded.memory_bank_.dtype == det.memory_bank_.dtype
        assert loaded.nbytes_ == det.nbytes_
        np.testing.assert_array_equal(loaded.score_samples(test), det.score_samples(test))
        np.testing.assert_array_equal(loaded.heatmaps(test), det.heatmaps(test))


# ---------------------------------------------------------------- real images, shipped model


def test_real_images_with_shipped_model(real_set, shipped_model: Path) -> None:
    ex = FeatureExtractor(shipped_model)
    train = [read_image(p) for p in real_set.train_good[:10]]
    good = [read_image(p) for p in real_set.test_good[:10]]
    defective = [read_image(p) for p in real_set.defects[:10]]
    fit_feats = ex.embed(augment(train, PRESETS["bottle"], factor=2, seed=0))
    test_feats = ex.embed(good + defective)
    labels = np.r_[np.zeros(len(good)), np.ones(len(defective))]
    one = {k: v[:1] for k, v in test_feats.items() if k.startswith("spatial/")}
    embed_ms = []
    for _ in range(20):
        t = time.perf_counter()
        ex.embed_one(good[0])
        embed_ms.append((time.perf_counter() - t) * 1e3)
    for ratio in (0.1, 1.0):
        det = PatchMemoryDetector(coreset_ratio=ratio)
        t = time.perf_counter()
        det.fit(fit_feats)
        fit_s = time.perf_counter() - t
        assert det.grid_ == (14, 14) and det.memory_bank_.shape[1] == 40 + 80
        assert det.memory_bank_.shape[0] == math.ceil(ratio * 30 * 196)
        auroc = roc_auc(labels, det.score_samples(test_feats))
        score_ms = []
        for _ in range(20):
            t = time.perf_counter()
            det.score_and_heatmaps(one)
            score_ms.append((time.perf_counter() - t) * 1e3)
        print(f"\n{real_set.name} patch-knn coreset_ratio={ratio}: AUROC {auroc:.3f}, fit {fit_s:.2f} s, "
              f"score+heat map {np.median(score_ms):.2f} ms/image (int8 embedding {np.median(embed_ms):.2f} ms), "
              f"{det.memory_bank_.shape[0]} patches, {det.nbytes_ / 1e6:.2f} MB")
        # Bottle (broken_large) measured 1.000 and elpv mono cells 0.99 with ten images each: 9 in 10 of the
        # 100 (defective, good) pairs ranked right on either set.
        assert auroc >= 0.9, f"{real_set.name}, coreset_ratio={ratio}: AUROC {auroc:.3f}"


def test_coreset_is_capped_by_default_but_exact_mode_is_not() -> None:
    rng = np.random.default_rng(7)
    train = {k: v for k, v in spatial(rng, 200).items()}  # 200 x 64 patches = 12800
    assert PatchMemoryDetector(coreset_ratio=0.5, projection_dim=8).fit(train).memory_bank_.shape[0] == 4000
    assert PatchMemoryDetector(coreset_ratio=1.0).fit(train).memory_bank_.shape[0] == 12800
