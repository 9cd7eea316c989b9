"""Held-out folds from one fit: the patch memory's coreset is selected once, and each fold's model is that
memory without the held-out images' patches, topped up with the other images' patches that only those covered.
The guarantee (nothing derived from image i scores image i) must hold as it did with a refit per fold, and the
held-out scores must not come out higher for a hole the held-out image left in the memory."""

import numpy as np
import pytest

import edge_agent.learn.detectors.patch_memory as patch_memory
from edge_agent.learn.augment import group_indices
from edge_agent.learn.detectors import CombinedDetector, PatchMemoryDetector, make_detector
from edge_agent.learn.detectors.patch_memory import nearest_distances
from edge_agent.learn.fitting import split_defects
from edge_agent.learn.heldout import first_rows, held_out_scores, reduced_held_out_scores, take_groups
from tests.synthetic import spatial

N_GROUPS, FACTOR, CHANNELS = 6, 2, 8


def _one_direction_per_image(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every patch of image g (and of its copies) points along channel g: patches of different images are at
    least 6 apart after the 3 x 3 average (corners keep 4/9 of the length), patches of one image within noise."""
    n = N_GROUPS * (1 + FACTOR)
    owner = np.concatenate([np.arange(N_GROUPS), np.repeat(np.arange(N_GROUPS), FACTOR)])  # augment's layout
    maps = 0.02 * rng.normal(size=(n, 6, 6, CHANNELS))
    maps[np.arange(n), :, :, owner] += 10.0
    return {"spatial/stage3": maps.astype(np.float32), "pooled/stage4": rng.normal(size=(n, 4)) + owner[:, None]}


class _Refit:
    """The patch memory refitted per fold, as before (hides ``held_out_models``)."""

    def __init__(self, **params) -> None:
        self.params = params

    def fit(self, features):
        self.detector = PatchMemoryDetector(**self.params).fit(features)
        return self

    def score_samples(self, features):
        return self.detector.score_samples(features)


def test_a_held_out_images_own_patches_are_never_in_the_memory_that_scores_it(monkeypatch) -> None:
    feats = _one_direction_per_image(np.random.default_rng(0))
    groups = group_indices(N_GROUPS, FACTOR)
    folds = []
    models = PatchMemoryDetector.held_out_models

    def spy(self, features, rows):
        for r, fold in zip(rows, models(self, features, rows)):
            folds.append((r, fold))
            yield fold

    monkeypatch.setattr(PatchMemoryDetector, "held_out_models", spy)
    full = make_detector("patch-knn").fit(feats)
    patches = full.patch_embeddings(feats).reshape(len(groups) * (1 + FACTOR), -1, CHANNELS)
    held = np.concatenate(reduced_held_out_scores(full, feats, groups, first_rows(take_groups(feats, groups)), 4))
    assert len(folds) == 4
    for rows, fold in folds:
        own = patches[rows].reshape(-1, CHANNELS)
        # Distance from every patch of the held-out images (originals and copies) to the fold's memory: no
        # patch of theirs is in it (one would be within noise), and the memory still holds the other images'.
        assert nearest_distances(own, fold.memory_bank_, fold.memory_sq_norms_).min() > 6
        others = patches[np.setdiff1d(np.arange(len(patches)), rows)].reshape(-1, CHANNELS)
        assert nearest_distances(others, fold.memory_bank_, fold.memory_sq_norms_).max() < 1
    originals = {k: v[:N_GROUPS] for k, v in feats.items()}
    assert np.all(full.score_samples(originals) < 1)  # the model that saw them: within noise
    assert np.all(held > 6)  # the models that did not: another image's direction away
    assert full.memory_bank_.shape[0] == len(full.coreset_indices_) > len(folds[0][1].memory_bank_)  # untouched


def test_the_combined_detector_selects_the_coreset_once_and_holds_images_out(monkeypatch) -> None:
    calls = []
    select = patch_memory.coreset_indices
    monkeypatch.setattr(patch_memory, "coreset_indices", lambda *a, **k: calls.append(1) or select(*a, **k))
    rng = np.random.default_rng(1)
    feats = _one_direction_per_image(rng)
    damaged = split_defects({k: v[:N_GROUPS] for k, v in _one_direction_per_image(rng).items()}, N_GROUPS)
    det = CombinedDetector(max_folds=3).fit(feats, groups=group_indices(N_GROUPS, FACTOR), defects=damaged)
    assert len(calls) == 1  # the final memory's; its folds reuse it (a refit per fold made it 4)
    # The patch part's held-out distances put every good original another image's direction away from the
    # memory that scored it: its own log distance sits far above the in-sample one.
    assert det.loc_[1] > np.log(6)
    calls.clear()
    held_out_scores(lambda: make_detector("patch-knn"), take_groups(feats, group_indices(N_GROUPS, FACTOR)),
                    first_rows(take_groups(feats, group_indices(N_GROUPS, FACTOR))), 3)
    assert len(calls) == 1  # the threshold's leave-one-out scores of the patch memory alone: one fit, too


def test_with_the_full_bank_a_folds_model_is_exactly_the_refit_one() -> None:
    rng = np.random.default_rng(2)
    feats = spatial(rng, 12)
    groups = group_indices(4, 2)
    by_group = take_groups(feats, groups)
    probes = [{k: np.concatenate([v[:1], spatial(rng, 2)[k]]) for k, v in g.items()} for g in by_group]
    refit = held_out_scores(lambda: _Refit(coreset_ratio=1.0), by_group, probes, 3)
    full = make_detector("patch-knn", coreset_ratio=1.0).fit(feats)
    reduced = reduced_held_out_scores(full, feats, groups, probes, 3)
    for a, b in zip(reduced, refit):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_a_hole_the_held_out_image_leaves_in_the_memory_is_filled_from_the_other_images() -> None:
    # Images in near-identical pairs (2g, 2g + 1), each pair along its own channel. The coreset keeps one twin's
    # patches for the pair's region; holding that twin out must not leave its region empty: a refit would keep the
    # other twin's patches, and so must the fold, or the held-out twin scores another pair's distance (> 6).
    rng = np.random.default_rng(5)
    n = 8
    maps = 0.02 * rng.normal(size=(n, 6, 6, CHANNELS))
    maps[np.arange(n), :, :, np.arange(n) // 2] += 10.0
    feats = {"spatial/stage3": maps.astype(np.float32)}
    groups = [np.array([i]) for i in range(n)]
    full = make_detector("patch-knn").fit(feats)
    patches, image_of = full.patch_embeddings(feats).reshape(n, 36, CHANNELS), full.coreset_indices_ // 36
    bare = [nearest_distances(patches[i], full.memory_bank_[image_of != i], full.memory_sq_norms_[image_of != i]).max()
            for i in range(n)]
    assert max(bare) > 6  # the memory less an image's own patches does leave a hole here
    probes = first_rows(take_groups(feats, groups))
    assert np.all(np.concatenate(held_out_scores(_Refit, take_groups(feats, groups), probes)) < 1)  # the twin covers it
    assert np.all(np.concatenate(reduced_held_out_scores(full, feats, groups, probes)) < 1)


def test_a_memory_left_empty_by_the_fold_is_rebuilt_from_the_other_images() -> None:
    rng = np.random.default_rng(3)
    feats = spatial(rng, 9)
    full = make_detector("patch-knn", coreset_max=1).fit(feats)
    owner = int(full.coreset_indices_[0]) // (full.grid_[0] * full.grid_[1])
    fold, kept = full.held_out_models(feats, [np.array([owner]), np.array([(owner + 1) % 9])])
    assert len(fold.memory_bank_) >= 1 and not np.any(fold.coreset_indices_ // 64 == owner)
    patches = full.patch_embeddings(feats).reshape(9, 64, -1)
    radius = nearest_distances(patches.reshape(-1, patches.shape[-1]), full.memory_bank_, full.memory_sq_norms_).max()
    others = np.delete(patches, owner, axis=0).reshape(-1, patches.shape[-1])
    assert nearest_distances(others, fold.memory_bank_, fold.memory_sq_norms_).max() <= radius * (1 + 1e-5)
    np.testing.assert_array_equal(kept.memory_bank_, full.memory_bank_)  # its one patch is not that image's
    assert kept.n_train_ == 8


def test_held_out_models_refuse_what_they_cannot_mean() -> None:
    feats = spatial(np.random.default_rng(4), 4)
    with pytest.raises(ValueError, match="not fitted"):
        next(PatchMemoryDetector().held_out_models(feats, [np.array([0])]))
    det = make_detector("patch-knn").fit(feats)
    with pytest.raises(ValueError, match=r"training rows in \[0, 4\)"):
        next(det.held_out_models(feats, [np.array([4])]))
    with pytest.raises(ValueError, match="features of 3 images, but this model was fitted on 4"):
        next(det.held_out_models({k: v[:3] for k, v in feats.items()}, [np.array([0])]))
