"""Label-free decision threshold from good images only, set by the share of good parts the operator accepts
to reject.

No defect is labelled on site, so the threshold must come from how the good images themselves score. Scoring
the training images with the model fitted on them is optimistic (they sit inside the fitted Gaussian), so each
original good image is scored by a model fitted WITHOUT it and without its augmented copies (leave-one-out,
`edge_agent.learn.heldout`): those scores are honest samples of how a new good part will score. The operator
states ``target_false_reject``, the share of good parts they accept to reject, and the threshold is the score
that share of new good parts is expected to exceed (`calibrate_threshold`). A part is anomalous when its score
is strictly above the threshold: `is_anomalous` is that rule, for every caller.

The leave-one-out models see one image less than the final model, so their scores are, if anything, slightly
higher than the final model's on new good parts: the resulting threshold errs towards fewer false rejects.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The defaults of the fit (`edge_agent.learn.fitting.FitSettings`) and of the configuration: owned here.
#: Chosen leave-one-set-out on the shared sets (docs/threshold.md).
DEFAULT_TARGET_FALSE_REJECT = 0.005
#: A threshold meant to reject half the good parts or more is not an inspection: targets lie below this, and the
#: sensitivity knob takes a target at most up to it.
MAX_TARGET_FALSE_REJECT = 0.5
DEFAULT_SENSITIVITY = 0.5
#: The sensitivity knob's range: the configuration, the ``threshold`` command and Home Assistant's slider use it.
SENSITIVITY_RANGE = (0, 1)
#: How far the sensitivity knob moves the target each way from its neutral 0.5: a factor of 10 at 0 and 1.
SENSITIVITY_DECADES = 1.0
THRESHOLD_METHODS = ("lognormal", "empirical")
DEFAULT_METHOD = "lognormal"

#: What a threshold promises, saved in the detector's metadata (``threshold_guarantee``):
#: "conformal": at most the target share of new good parts rejected, from the ranks alone (any distribution);
#: "extrapolated": the target is below what n scores can guarantee, so it comes from a fitted log-normal tail;
#: "limited": below that limit too, but the largest score (``method = "empirical"``, or fewer than 3 scores),
#: which new good parts exceed about 1 / (n + 1) of the time, more than the target; "fixed": the operator's value.
GUARANTEES = ("conformal", "extrapolated", "limited", "fixed")

#: The rule of saved detectors (quantile 0.99, margin 0.10) that `legacy_target` translates.
LEGACY_QUANTILE = 0.99
LEGACY_MARGIN = 0.10
LEGACY_MIN_TARGET = 0.001


def target_from_sensitivity(sensitivity: float, target: float = DEFAULT_TARGET_FALSE_REJECT) -> float:
    """The target the sensitivity knob (0..1, 0.5 neutral) makes of ``target``: target * 10 ** (2 s - 1),
    at most `MAX_TARGET_FALSE_REJECT`.

    Why log-linear: the knob came first (configs and ``threshold {"sensitivity": x}`` commands use it), and
    shares are compared by ratio (0.5 % against 1 % is as big a step as 5 % against 10 %), so each step of
    the knob multiplies the share of good parts rejected by the same factor: 10x at 1, a tenth at 0, and
    higher sensitivity = more parts rejected, as before.
    """
    low, high = SENSITIVITY_RANGE
    if not low <= float(sensitivity) <= high:
        raise ValueError(f"sensitivity must be within [{low:g}, {high:g}], got {sensitivity}")
    check_target(target)
    return min(float(target) * 10.0 ** (SENSITIVITY_DECADES * (2.0 * float(sensitivity) - 1.0)),
               MAX_TARGET_FALSE_REJECT)


def check_target(target: float) -> float:
    if not 0.0 < float(target) < MAX_TARGET_FALSE_REJECT:
        raise ValueError(f"target_false_reject must be a share of good parts above 0 and below "
                         f"{MAX_TARGET_FALSE_REJECT}, got {target}")
    return float(target)


def legacy_target(quantile: float, margin: float) -> float:
    """The target a threshold set by the replaced rule (the ``quantile`` of the scores widened by ``margin``)
    counts as: 1 - quantile, and the old default pair counts as the new default target.

    Why: an old configuration or saved detector must compare equal to the configuration it came from, so that
    updating the software moves no threshold until the operator changes [threshold] or retrains; and one that
    kept the old defaults meant "the default", not "exactly 1 %". The margin has no counterpart: it widened
    an estimate the target's method now makes itself. quantile = 1 (the largest score) counts as
    `LEGACY_MIN_TARGET`.
    """
    if (float(quantile), float(margin)) == (LEGACY_QUANTILE, LEGACY_MARGIN):
        return DEFAULT_TARGET_FALSE_REJECT
    return min(max(round(1.0 - float(quantile), 12), LEGACY_MIN_TARGET), MAX_TARGET_FALSE_REJECT)


def conformal_rank(n: int, target: float) -> int | None:
    """k = ceil((n + 1)(1 - target)): a new good part exchangeable with n scored ones exceeds the k-th smallest
    of them with probability at most ``target``; None when k > n, i.e. target < 1 / (n + 1).

    That is the finite-sample limit: a new part is the largest of n + 1 with probability 1 / (n + 1), so ranks
    alone cannot promise less, whatever the scores (10 good images: 1/11, about 9 %).
    """
    k = math.ceil((n + 1) * (1.0 - float(target)) - 1e-9)  # the guard keeps (n + 1)(1 - 1/(n + 1)) at n
    return k if k <= n else None


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with integer ``df``: bisection on its closed-form distribution
    function (Abramowitz & Stegun 26.7.3-4), as the camera has numpy but not scipy."""

    def cdf(t: float) -> float:
        theta = math.atan(t / math.sqrt(df))
        c2, term = math.cos(theta) ** 2, (math.cos(theta) if df % 2 else 1.0)
        total = term if df > 1 else 0.0
        for k in range(3 if df % 2 else 2, df - 1, 2):
            term *= c2 * (k - 1) / k
            total += term
        inside = 2 / math.pi * (theta + math.sin(theta) * total) if df % 2 else math.sin(theta) * total
        return (1.0 + inside) / 2.0

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2.0


def lognormal_bound(scores: np.ndarray, target: float) -> float:
    """exp(m + t_{n-1, 1-target} * s * sqrt(1 + 1/n)), m and s the mean and standard deviation of log scores:
    the score a new good part exceeds with probability ``target`` when log scores are normal, their mean and
    spread estimated from these n (a prediction bound, not the plug-in quantile).

    Why a tail at all: below 1 / (n + 1) ranks cannot place the threshold (`conformal_rank`), and distances of
    good parts to their own model are positive and right-skewed, which a log-normal follows closely enough to
    extrapolate. Why the prediction bound: the plug-in quantile exp(m + z s) treats the 10 images' m and s as
    exact; on the shared sets it rejected 4-8 % of new good parts at a 1 % target (docs/threshold.md).
    """
    logs, n = np.log(scores), scores.size
    factor = student_t_quantile(1.0 - target, n - 1) * math.sqrt(1.0 + 1.0 / n)
    return float(np.exp(logs.mean() + factor * logs.std(ddof=1)))


def threshold_guarantee(n: int, target: float, method: str = DEFAULT_METHOD, override: float | None = None) -> str:
    """Which of `GUARANTEES` a threshold from n scores at ``target`` carries (see `calibrate_threshold`)."""
    if override is not None:
        return "fixed"
    if conformal_rank(n, target) is not None:
        return "conformal"
    return "extrapolated" if method == "lognormal" and n >= 3 else "limited"


def calibrate_threshold(
    loo_scores: np.ndarray | Sequence[float],
    target_false_reject: float = DEFAULT_TARGET_FALSE_REJECT,
    sensitivity: float = DEFAULT_SENSITIVITY,
    method: str = DEFAULT_METHOD,
    override: float | None = None,
) -> float:
    """The score that a share ``target_false_reject`` of new good parts is expected to exceed, from the n
    leave-one-out scores of the good images; a part is anomalous when its score is strictly above it.

    The target is first moved by the sensitivity knob (`target_from_sensitivity`; 0.5 leaves it). Then:
    - target >= 1 / (n + 1): conformal, the k-th smallest score with k = `conformal_rank` (no distribution
      assumed; guaranteed as far as new good parts are exchangeable with the good images);
    - below that limit (10 images and a 1 % target, the usual case), ``method="lognormal"``: the log-normal
      prediction bound (`lognormal_bound`), never below the largest score, since the bound extrapolates
      beyond what the images show ("extrapolated"); ``method="empirical"``: the largest score, which makes no
      distributional assumption and so promises only about 1 / (n + 1) ("limited"). With fewer than 3
      scores (no spread to fit) or a score of 0 (no log) the log-normal falls back to the largest score too.
    The largest score is the floor below the limit because a lower threshold would already reject one of the n
    good images, a share 1 / n, above any target below 1 / (n + 1).
    override: a fixed threshold set by the operator, returned as is (still validated).
    `threshold_guarantee` names the case for the fit's metadata and the state.
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
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; choose one of: {', '.join(THRESHOLD_METHODS)}")
    target = target_from_sensitivity(sensitivity, check_target(target_false_reject))
    ordered = np.sort(scores)
    k = conformal_rank(scores.size, target)
    if k is not None:
        return float(ordered[k - 1])
    if threshold_guarantee(scores.size, target, method) == "extrapolated" and np.all(scores > 0):
        return max(float(ordered[-1]), lognormal_bound(scores, target))
    return float(ordered[-1])


def is_anomalous(scores: np.ndarray | Sequence[float], threshold: float) -> np.ndarray:
    """Verdict per score: strictly above the threshold, and anomalous whenever the score is not a number (a part
    the detector could not score is rejected, never passed: NaN compares false with everything)."""
    return ~(np.asarray(scores, dtype=np.float64) <= float(threshold))


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
