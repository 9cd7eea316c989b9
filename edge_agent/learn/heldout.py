"""Held-out scoring: how a good image scores under a model that never saw it nor its augmented copies.

Both the label-free threshold (`edge_agent.learn.threshold`, through `edge_agent.learn.fitting`) and the combined
detector's normalisation (`edge_agent.learn.detectors.combined`) need honest scores of the good training images:
scoring an image with the model fitted on it is optimistic (it sits inside the fitted distribution). So each
original is scored by a model fitted WITHOUT it and without its augmented copies (a "group").

A detector whose fit is expensive and can be taken apart row by row (`Reducible`: the patch memory, whose
greedy coreset dominates a fit) is fitted once; each fold's model is that fit with every part derived from the
held-out rows removed, instead of a refit per fold. The guarantee is the same (nothing derived from image i is
in the model that scores image i); what the fit on all rows may still carry into a fold is documented by the
detector (`edge_agent.learn.detectors.patch_memory`).

This module sits below the detectors and the threshold: it imports neither, and only needs something with
``fit(features) -> self`` and ``score_samples(features) -> (n,)`` (`Scorer`). It also owns `Features`, the
one type of the feature mappings every module in ``edge_agent.learn`` passes around.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from edge_agent.embed.manifest import Features


class Scorer(Protocol):
    """What held-out scoring needs of a detector (`edge_agent.learn.detectors.base.Detector` is one)."""

    def fit(self, features: Features) -> Scorer: ...

    def score_samples(self, features: Features) -> np.ndarray: ...


@runtime_checkable
class Reducible(Protocol):
    """A fitted detector that can drop training rows without refitting (a fold's model in a fraction of a fit)."""

    def fit(self, features: Features) -> Reducible: ...

    def score_samples(self, features: Features) -> np.ndarray: ...

    def held_out_models(self, features: Features, folds: Sequence[np.ndarray]) -> Iterator[Scorer]:
        """Per array of rows of ``features`` (the features it was fitted on), a model that saw nothing of them."""


def take_groups(features: Features, groups: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feature mapping per group of row indices (e.g. `edge_agent.learn.augment.group_indices`: an original
    followed by its augmented copies, so that row 0 of every group is the original)."""
    arrays = {name: np.asarray(arr) for name, arr in features.items()}
    return [{name: arr[np.asarray(idx)] for name, arr in arrays.items()} for idx in groups]


def first_rows(features_by_group: Sequence[Features], n: int = 1) -> list[dict[str, np.ndarray]]:
    """The first ``n`` rows of every group: its original, with `take_groups`' layout."""
    return [{name: np.asarray(arr)[:n] for name, arr in g.items()} for g in features_by_group]


def held_out_scores(
    make_detector: Callable[[], Scorer],
    features_by_group: Sequence[Features],
    probes: Sequence[Features],
    max_folds: int | None = None,
) -> list[np.ndarray]:
    """Scores of ``probes[i]`` under a detector fitted without group i and without the groups in its fold.

    ``make_detector`` returns a fresh unfitted detector (e.g. ``lambda: make_detector("mahalanobis")``).
    With ``max_folds`` the groups are dealt round-robin into that many folds and each fold is held out at
    once: the same guarantee (nothing derived from image i is scored by a model that saw image i or its
    copies) at ``max_folds`` fits instead of one per image, which matters for spatial detectors and large N.
    A probe is whatever must be judged as if image i were new: its original (`leave_one_out_scores`), or
    damaged copies of it (the combined detector's weights). A `Reducible` detector is fitted once, on all
    groups, and each fold's model is that fit without the fold's rows (`reduced_held_out_scores`).
    """
    if len(probes) != len(features_by_group):
        raise ValueError(f"one probe set per group expected, got {len(probes)} for {len(features_by_group)} groups")
    fold_of = _folds(len(features_by_group), max_folds)
    levels = set(features_by_group[0])
    for i, group in enumerate(features_by_group):
        if set(group) != levels:
            raise ValueError(f"group {i} has levels {sorted(group)}, group 0 has {sorted(levels)}")
    n = len(features_by_group)
    first = make_detector()
    if isinstance(first, Reducible):
        sizes = [len(next(iter(g.values()))) for g in features_by_group]
        whole = {name: np.concatenate([np.asarray(g[name]) for g in features_by_group]) for name in levels}
        starts = np.cumsum([0, *sizes])
        rows = [np.arange(starts[j], starts[j + 1]) for j in range(n)]
        return reduced_held_out_scores(first.fit(whole), whole, rows, probes, max_folds)
    scores: list[np.ndarray] = [np.empty(0)] * n
    for fold in range(int(fold_of.max()) + 1):
        held = np.flatnonzero(fold_of == fold)
        train = {
            name: np.concatenate([np.asarray(g[name]) for j, g in enumerate(features_by_group) if fold_of[j] != fold])
            for name in levels
        }
        detector = (first if fold == 0 else make_detector()).fit(train)
        _score_fold(detector, held, probes, scores)
    return scores


def reduced_held_out_scores(
    fitted: Reducible,
    features: Features,
    groups: Sequence[np.ndarray],
    probes: Sequence[Features],
    max_folds: int | None = None,
) -> list[np.ndarray]:
    """`held_out_scores` (same folds) from ``fitted``, a detector fitted on all of ``features``: each fold's model
    is ``fitted.held_out_models`` without the rows of the fold's groups (``groups``: index arrays into ``features``).

    Why: a camera fits the model on all images anyway; removing rows from it costs a fraction of a refit per fold.
    """
    if len(probes) != len(groups):
        raise ValueError(f"one probe set per group expected, got {len(probes)} for {len(groups)} groups")
    fold_of = _folds(len(groups), max_folds)
    held = [np.flatnonzero(fold_of == fold) for fold in range(int(fold_of.max()) + 1)]
    rows = [np.concatenate([np.asarray(groups[j]) for j in h]) for h in held]
    scores: list[np.ndarray] = [np.empty(0)] * len(groups)
    for h, model in zip(held, fitted.held_out_models(features, rows)):
        _score_fold(model, h, probes, scores)
    return scores


def _folds(n: int, max_folds: int | None) -> np.ndarray:
    """Fold of each of ``n`` groups: dealt round-robin into ``max_folds`` folds (one per group without it)."""
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 good images, got {n}")
    if max_folds is not None and max_folds < 2:
        raise ValueError(f"max_folds must be at least 2, got {max_folds}")
    return np.arange(n) % (n if max_folds is None else min(n, max_folds))


def _score_fold(detector: Scorer, held: np.ndarray, probes: Sequence[Features], out: list[np.ndarray]) -> None:
    """Score the probes of the ``held`` groups in one batch and store each group's share in ``out``."""
    sizes = [len(next(iter(probes[j].values()))) for j in held]
    levels = probes[held[0]].keys()
    probe = {name: np.concatenate([np.asarray(probes[j][name]) for j in held]) for name in levels}
    for j, part in zip(held, np.split(detector.score_samples(probe), np.cumsum(sizes)[:-1])):
        out[j] = part


def leave_one_out_scores(
    make_detector: Callable[[], Scorer],
    features_by_group: Sequence[Features],
    max_folds: int | None = None,
) -> np.ndarray:
    """Score of each group's ORIGINAL (row 0) under a detector fitted without it: shape (n_groups,).

    See `held_out_scores` for the folds.
    """
    return np.concatenate(held_out_scores(make_detector, features_by_group, first_rows(features_by_group), max_folds))
