"""Label-free decision threshold from good images only.

No defect is labelled on site, so the threshold must come from how the good images themselves score. Scoring
the training images with the model fitted on them is optimistic (they sit inside the fitted Gaussian), so each
original good image is scored by a model fitted WITHOUT it and without its augmented copies (leave-one-out,
`edge_agent.learn.heldout`): those scores are honest samples of how a new good part will score. The threshold
is a high quantile of them, widened by a margin, and scaled by an operator sensitivity knob. A part is
anomalous when its score is strictly above the threshold: `is_anomalous` is that rule, for every caller.

The leave-one-out models see one image less than the final model, so their scores are, if anything, slightly
higher than the final model's on new good parts: the resulting threshold errs towards fewer false rejects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

#: The defaults of the fit (`edge_agent.learn.fitting.FitSettings`) and of the configuration: owned here.
DEFAULT_SENSITIVITY = 0.5
DEFAULT_QUANTILE = 0.99
DEFAULT_MARGIN = 0.10
THRESHOLD_METHODS = ("lognormal", "empirical")
DEFAULT_METHOD = "lognormal"


def sensitivity_factor(sensitivity: float) -> float:
    """Multiplier 2 ** (1 - 2 s): 2x at s = 0, 1x at s = 0.5 (neutral), 0.5x at s = 1.

    Log-symmetric around the neutral setting, so each step of the knob moves the threshold by the same ratio
    in both directions and the threshold never reaches zero.
    """
    if not (0.0 <= float(sensitivity) <= 1.0):
        raise ValueError(f"sensitivity must be within [0, 1], got {sensitivity}")
    return float(2.0 ** (1.0 - 2.0 * float(sensitivity)))


def lognormal_quantile(scores: np.ndarray, quantile: float) -> float:
    """exp(mean(log s) + z_q * std(log s)): the q-quantile of a log-normal fitted to the scores.

    Why: with 5-20 good images the empirical 0.99-quantile is just the largest score, and a new good part
    exceeds the largest of N good scores with probability 1 / (N + 1), about 9% at N = 10, whatever q says.
    Distances of good parts to their own model are positive and right-skewed, which a log-normal follows
    closely enough to extrapolate the tail that so few images cannot show.
    """
    logs = np.log(scores)
    return float(np.exp(logs.mean() + NormalDist().inv_cdf(quantile) * logs.std(ddof=1)))


def calibrate_threshold(
    loo_scores: np.ndarray | Sequence[float],
    sensitivity: float = DEFAULT_SENSITIVITY,
    quantile: float = DEFAULT_QUANTILE,
    margin: float = DEFAULT_MARGIN,
    override: float | None = None,
    method: str = DEFAULT_METHOD,
) -> float:
    """threshold = base * (1 + margin) * 2 ** (1 - 2 * sensitivity); a part is anomalous when its score is
    strictly above the threshold.

    base: the ``quantile`` of the leave-one-out scores of the good images; with ``method="lognormal"``
    (the default) the larger of the empirical quantile and the quantile of a log-normal fitted to them (see
    `lognormal_quantile`), so that ``quantile`` means what it says (the share of good parts expected below)
    even with 10 images; ``"empirical"`` uses the empirical quantile alone.
    sensitivity (operator knob in [0, 1], default 0.5 = neutral): HIGHER sensitivity = LOWER threshold = more
    parts rejected (fewer missed defects, more false rejects); 1.0 halves and 0.0 doubles the threshold.
    margin: relative widening that absorbs the uncertainty of a quantile estimated from so few scores.
    override: a fixed threshold set by the operator, returned as is (still validated).
    Scores are distances (>= 0), so scaling them is meaningful.
    """
    if override is not None:
        if not np.isfinite(override) or override < 0:
            raise ValueError(f"threshold override must be a finite number >= 0, got {override}")
        return float(override)
    scores = np.asarray(loo_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("no leave-one-out scores to calibrate on")
    if not np.all(np.isfinite(scores)) or np.any(scores < 0):
        raise ValueError("leave-one-out scores must be finite and >= 0 (distances)")
    if not (0.0 < float(quantile) <= 1.0):
        raise ValueError(f"quantile must be within (0, 1], got {quantile}")
    if not (margin >= 0 and np.isfinite(margin)):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of: {', '.join(THRESHOLD_METHODS)}")
    base = float(np.quantile(scores, quantile))
    if method == "lognormal" and quantile < 1.0 and scores.size >= 3 and np.all(scores > 0):
        base = max(base, lognormal_quantile(scores, quantile))
    return float(base * (1.0 + margin) * sensitivity_factor(sensitivity))


def is_anomalous(scores: np.ndarray | Sequence[float], threshold: float) -> np.ndarray:
    """Verdict per score: strictly above the threshold."""
    return np.asarray(scores, dtype=np.float64) > float(threshold)


@dataclass(frozen=True)
class ThresholdReport:
    """How a threshold splits scored samples, e.g. for the retrain log and the MQTT state message.

    false_reject_rate: share of good samples flagged anomalous. detection_rate: share of anomalous samples
    flagged (None when no anomalous samples were given: the normal case on site).
    """

    threshold: float
    n_good: int
    false_reject_rate: float
    n_anomalous: int = 0
    detection_rate: float | None = None

    @classmethod
    def from_scores(
        cls,
        threshold: float,
        good_scores: np.ndarray | Sequence[float],
        anomalous_scores: np.ndarray | Sequence[float] | None = None,
    ) -> ThresholdReport:
        good = np.asarray(good_scores, dtype=np.float64).ravel()
        if good.size == 0:
            raise ValueError("need at least one good score")
        bad = None if anomalous_scores is None else np.asarray(anomalous_scores, dtype=np.float64).ravel()
        return cls(
            threshold=float(threshold),
            n_good=int(good.size),
            false_reject_rate=float(is_anomalous(good, threshold).mean()),
            n_anomalous=0 if bad is None else int(bad.size),
            detection_rate=None if bad is None or bad.size == 0 else float(is_anomalous(bad, threshold).mean()),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
