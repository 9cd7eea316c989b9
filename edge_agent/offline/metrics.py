"""Image-level metrics of the paper's protocol, in numpy (the device has no scikit-learn)."""

from __future__ import annotations

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as the Mann-Whitney U statistic needs)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(values)]))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random defect scores above a random good part.

    Computed as the normalised Mann-Whitney U statistic, which equals the trapezoidal ROC area, ties included.
    ``labels``: 1 = anomalous, 0 = good.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both good and anomalous samples")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def area_under_auc_percent(percent: np.ndarray, auroc: np.ndarray) -> float:
    """The paper's summary of a learning curve: mean AUROC over the share of training data used.

    Trapezoidal area under AUROC as a function of the percentage of the available good images, divided by
    the span of percentages, so 1.0 means perfect at every sample size and curves over the same sizes compare.
    """
    percent = np.asarray(percent, dtype=np.float64)
    auroc = np.asarray(auroc, dtype=np.float64)
    order = np.argsort(percent)
    percent, auroc = percent[order], auroc[order]
    if len(percent) == 1:
        return float(auroc[0])
    area = np.sum(np.diff(percent) * (auroc[1:] + auroc[:-1]) / 2.0)  # np.trapezoid needs numpy 2
    return float(area / (percent[-1] - percent[0]))
