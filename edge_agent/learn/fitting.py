"""The few-shot fit: good images -> sanity checks -> augment -> embed -> detector -> label-free threshold.

Why one function for every caller: `edge-agent fit`, a retrain at shift start and the evaluation protocol
must produce the same detector from the same images, or the evaluation would measure something the camera
never runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from edge_agent.learn.alignment import share_one_pose
from edge_agent.learn.augment import PRESETS, AugmentationPolicy, augment, group_indices
from edge_agent.learn.detectors import DEFAULT_DETECTOR, Detector, make_detector
from edge_agent.learn.distinct import DistinctParts, distinct_parts
from edge_agent.embed.manifest import Features
from edge_agent.learn.heldout import leave_one_out_scores, take_groups
from edge_agent.learn.pseudo_defects import DEFECTS_PER_IMAGE, pseudo_defects
from edge_agent.learn.threshold import (
    DEFAULT_METHOD,
    DEFAULT_SENSITIVITY,
    DEFAULT_TARGET_FALSE_REJECT,
    LEGACY_MARGIN,
    LEGACY_QUANTILE,
    ThresholdReport,
    calibrate_threshold,
    legacy_target,
    target_from_sensitivity,
    threshold_guarantee,
)
from edge_agent.learn.upright import METADATA_KEY, UPRIGHT_MODES, Upright, upright_window

log = logging.getLogger(__name__)

MIN_GOOD_IMAGES = 2
DEFAULT_MAX_FOLDS = 10


class FitError(ValueError):
    """The good images cannot give a trustworthy model (too few, black, frozen, identical...)."""


@dataclass
class FitSettings:
    detector: str = DEFAULT_DETECTOR
    detector_params: dict[str, Any] = field(default_factory=dict)
    policy: AugmentationPolicy = field(default_factory=lambda: PRESETS["object"])
    factor: int = 10
    seed: int = 0
    target_false_reject: float = DEFAULT_TARGET_FALSE_REJECT
    sensitivity: float = DEFAULT_SENSITIVITY
    threshold_override: float | None = None
    threshold_method: str = DEFAULT_METHOD
    max_folds: int | None = DEFAULT_MAX_FOLDS
    upright: str = UPRIGHT_MODES[0]  # whether long parts at any angle may be turned upright (`seen_pose`)

    def threshold_settings(self) -> dict[str, Any]:
        """The settings the threshold follows, as saved with a detector (see `rethreshold`)."""
        return {"target_false_reject": self.target_false_reject, "sensitivity": self.sensitivity,
                "method": self.threshold_method, "override": self.threshold_override}


def set_threshold(metadata: dict[str, Any], target_false_reject: float, sensitivity: float, method: str,
                  override: float | None) -> dict[str, Any]:
    """``metadata`` with the threshold calibrated from its ``loo_scores`` and the keys that say how it was set:
    the target, the knob, the method, the target the knob made of it and what the threshold promises
    (`edge_agent.learn.threshold.GUARANTEES`). The replaced rule's quantile and margin go: they no longer
    describe the threshold."""
    scores = metadata["loo_scores"]
    effective = target_from_sensitivity(sensitivity, target_false_reject)
    meta = {k: v for k, v in metadata.items() if k not in ("quantile", "margin")}
    return {**meta, "threshold": calibrate_threshold(scores, target_false_reject, sensitivity, method, override),
            "target_false_reject": target_false_reject, "sensitivity": sensitivity, "threshold_method": method,
            "threshold_override": override, "effective_target_false_reject": effective,
            "threshold_guarantee": threshold_guarantee(len(scores), effective, method, override)}


def recorded_threshold_settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """The threshold settings a saved detector's threshold was last set from by configuration (a command that
    moves the threshold leaves them as they were), as `FitSettings.threshold_settings` writes them.

    Detectors saved before ``target_false_reject`` (quantile and margin instead) count as set from
    `edge_agent.learn.threshold.legacy_target`'s target, the one a configuration with the same old keys means:
    the threshold they carry stays until [threshold] changes or a retrain. Older still (no settings key): the
    fit's own fields."""
    recorded = metadata.get("threshold_settings") or {
        "sensitivity": metadata["sensitivity"], "quantile": metadata.get("quantile", LEGACY_QUANTILE),
        "margin": metadata.get("margin", LEGACY_MARGIN), "method": metadata.get("threshold_method", "empirical"),
        "override": metadata.get("threshold_override")}
    if "target_false_reject" in recorded:
        return recorded
    return {"target_false_reject": legacy_target(recorded["quantile"], recorded["margin"]),
            "sensitivity": recorded["sensitivity"], "method": recorded["method"], "override": recorded["override"]}


def rethreshold(metadata: dict[str, Any], settings: FitSettings) -> dict[str, Any]:
    """A saved detector's metadata with its threshold recalibrated to ``settings`` from its leave-one-out scores:
    no refit, as a configuration change of the threshold needs none."""
    meta = set_threshold(metadata, settings.target_false_reject, settings.sensitivity, settings.threshold_method,
                         settings.threshold_override)
    return {**meta, "threshold_settings": settings.threshold_settings()}


@dataclass
class FitResult:
    detector: Detector
    threshold: float
    loo_scores: np.ndarray
    n_train: int
    report: ThresholdReport
    timings: dict[str, float]
    fitted_at: str
    distinct_parts: int | None = None  # how many distinct parts the good images showed (None: features only)
    pose: dict[str, Any] | None = None  # whether they share one pose (`edge_agent.learn.alignment`)
    upright: Upright | None = None  # the window parts are turned upright into before embedding (`seen_pose`)

    def metadata(self, settings: FitSettings) -> dict[str, Any]:
        """What a saved detector carries besides its arrays: enough to explain and reproduce the fit."""
        meta = {
            "n_train": self.n_train, "fitted_at": self.fitted_at,
            "detector": settings.detector, "detector_params": settings.detector_params,
            "augmentation": settings.policy.to_dict(), "factor": settings.factor, "seed": settings.seed,
            "threshold_settings": settings.threshold_settings(),
            "loo_scores": [float(f"{s:.7g}") for s in self.loo_scores], "timings_s": self.timings,
            "detector_summary": self.detector.describe(), "distinct_parts": self.distinct_parts,
            "pose": self.pose, METADATA_KEY: self.upright.to_metadata() if self.upright else None,
        }
        meta = set_threshold(meta, settings.target_false_reject, settings.sensitivity, settings.threshold_method,
                             settings.threshold_override)
        return {**meta, "threshold": self.threshold}


def min_distinct_parts(n_frames: int, min_images: int = MIN_GOOD_IMAGES) -> int:
    """The fewest distinct parts ``n_frames`` good frames may show: ``min_images`` and at least half the frames.

    Why not refuse any repeat: an operator asked for 10 parts who placed one of them twice still shows 9 parts,
    plenty for a few-shot fit; refusing would cost a whole retrain for nothing, so that passes with a warning
    naming the repeated frames. Why half: beyond that most frames are repeats, the detector learns the few parts
    it saw (the issue's case: 10 frames of one bottle rejected 30 of 30 other good bottles), and the
    leave-one-out threshold is measured on frames whose twin stayed in the fit, so it comes out too tight.
    """
    return max(min_images, -(-n_frames // 2))


def check_good_images(images: Sequence[np.ndarray], min_images: int = MIN_GOOD_IMAGES) -> DistinctParts:
    """Refuse training frames that would teach the model nonsense: a covered lens, a frozen stream, one part.

    Returns how many distinct parts the frames show (`learn.distinct`: two frames are the same part when their
    difference is explained by their own sensor noise, as from a camera re-triggered on a part that did not move).
    Fewer than `min_distinct_parts` is refused; fewer distinct parts than frames, but enough, is logged as a warning.
    """
    if len(images) < min_images:
        raise FitError(f"got {len(images)} good images, at least {min_images} are needed")
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        log.info("good images come in %d different sizes; all are resized to the model input", len(shapes))
    for i, im in enumerate(images):
        if im.size == 0:
            raise FitError(f"good image {i} is empty")
        if float(im.max()) < 16:
            raise FitError(f"good image {i} is black (max value {int(im.max())}): is the lens covered or the light off?")
        if float(im.std()) < 1.0:
            raise FitError(f"good image {i} is flat (std {im.std():.2f}): nothing in view?")
    digests = {}
    for i, im in enumerate(images):
        key = (im.shape, hash(np.ascontiguousarray(im[::4, ::4]).tobytes()))
        if key in digests and np.array_equal(images[digests[key]], im):
            raise FitError(f"good images {digests[key]} and {i} are identical: is the camera stream frozen?")
        digests[key] = i
    parts = distinct_parts(images)
    if parts.n_parts < parts.n_frames:
        need = min_distinct_parts(parts.n_frames, min_images)
        same = "; ".join(", ".join(str(i) for i in g) for g in parts.repeated)
        what = (f"{parts.n_frames} frames show {parts.n_parts} distinct part{'s' if parts.n_parts != 1 else ''} "
                f"(frames {same} show the same part, differing only by sensor noise)")
        if parts.n_parts < need:
            raise FitError(f"{what}: show different parts (at least {need}), one per frame, and retrain")
        log.warning("%s: fitting anyway; for the best model show a different part in every frame", what)
    return parts


def check_fold_sizes(n_originals: int, factor: int, max_folds: int | None) -> None:
    """Every leave-one-out fit needs at least 2 samples: refuse, before any fitting, N and factor that leave fewer."""
    n_folds = n_originals if max_folds is None else min(n_originals, max_folds)
    held_out = -(-n_originals // max(n_folds, 1))
    if (n_originals - held_out) * (factor + 1) < 2:
        raise FitError(f"{n_originals} good images with augmentation factor {factor} leave a single sample to fit "
                       f"on when one is held out for the threshold: give at least 3 good images, or augment")


def augmented_features(
    embed: Callable[[list[np.ndarray]], Features], images: Sequence[np.ndarray], policy: AugmentationPolicy,
    factor: int, seed: int,
) -> Features:
    """Features of the originals and their augmented copies, in `augment`'s order."""
    return embed(augment(list(images), policy, factor, seed))


def split_defects(defects: Features, n_originals: int) -> list[Features]:
    """`pseudo_defects` order (each original's damaged copies in turn) -> one Features per original."""
    n = len(next(iter(defects.values())))
    if n == 0 or n % n_originals:
        raise ValueError(f"{n} damaged copies cannot be split evenly over {n_originals} good images")
    per = n // n_originals
    return [{k: np.asarray(v)[i * per:(i + 1) * per] for k, v in defects.items()} for i in range(n_originals)]


def fit_features(
    features: Features, n_originals: int, settings: FitSettings, defects: Sequence[Features] | None = None,
    aligned: bool | None = None,
) -> FitResult:
    """Detector and threshold from features laid out in `augment` order (originals, then copies).

    ``defects``: per original, the features of its `pseudo_defects` (`split_defects` cuts an embedding of them
    all), for detectors that weigh their parts by them (``needs_defects``); others ignore it. ``aligned``:
    whether the originals share one pose (`edge_agent.learn.alignment`), for detectors that ask
    (``needs_pose``); None: not known (features only), taken as aligned.
    """
    check_fold_sizes(n_originals, settings.factor, settings.max_folds)
    groups_idx = group_indices(n_originals, settings.factor)
    groups = take_groups(features, groups_idx)

    def new_detector() -> Detector:
        return make_detector(settings.detector, **settings.detector_params)

    t0 = time.perf_counter()
    detector = new_detector()
    extra: dict[str, Any] = {}
    if detector.needs_groups:
        extra["groups"] = groups_idx
    if detector.needs_defects and defects is not None:
        extra["defects"] = defects
    if detector.needs_pose and aligned is not None:
        extra["aligned"] = aligned
    detector.fit(features, **extra)
    t1 = time.perf_counter()
    # A detector that held images out while fitting (the combined one) already has their scores.
    loo = getattr(detector, "oof_scores_", None)
    if loo is None:
        loo = leave_one_out_scores(new_detector, groups, settings.max_folds)
    t2 = time.perf_counter()
    threshold = calibrate_threshold(loo, settings.target_false_reject, settings.sensitivity,
                                    settings.threshold_method, settings.threshold_override)
    report = ThresholdReport.from_scores(threshold, loo)
    target = target_from_sensitivity(settings.sensitivity, settings.target_false_reject)
    guarantee = threshold_guarantee(len(loo), target, settings.threshold_method, settings.threshold_override)
    log.info("fitted %s on %d images (+%d copies each): threshold %.4g for %.2g%% false rejects (%s), "
             "leave-one-out false rejects %.0f%%", settings.detector, n_originals, settings.factor, threshold,
             100 * target, guarantee, 100 * report.false_reject_rate)
    if guarantee == "limited":
        log.warning("a %.2g%% false-reject target needs at least %d good images without a fitted tail; with %d, "
                    "the threshold is their largest score and about 1 in %d good parts will be rejected "
                    "([threshold] method = \"lognormal\" extrapolates)", 100 * target, math.ceil(1 / target) - 1,
                    len(loo), len(loo) + 1)
    return FitResult(detector, threshold, loo, n_originals, report,
                     {"fit": round(t1 - t0, 4), "calibrate": round(t2 - t1, 4)},
                     dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def seen_pose(images: Sequence[np.ndarray], mode: str = UPRIGHT_MODES[0]
              ) -> tuple[list[np.ndarray], Upright | None, dict[str, Any]]:
    """(the good images as the detector will see them, the upright window or None, the pose report).

    Parts that share one pose, and round or square parts, are left as the camera sees them; long parts at any
    angle are turned upright and cropped (`edge_agent.learn.upright`), and the report's ``aligned`` is then
    whether that made them share one: what the detector is told (``needs_pose``). The camera's own test stays
    in ``as_captured``. ``mode`` "off" (`UPRIGHT_MODES`) leaves every part as the camera sees it."""
    if mode not in UPRIGHT_MODES:
        raise ValueError(f"upright must be one of {', '.join(UPRIGHT_MODES)}, got {mode!r}")
    aligned, alignment = share_one_pose(images)
    as_captured = {"aligned": aligned, "orientation_alignment": round(alignment, 4)}
    upright = None if aligned or mode == "off" else upright_window(images)
    if upright is None:
        return list(images), None, as_captured
    turned = [upright.apply(image).image for image in images]
    aligned, alignment = share_one_pose(turned)
    log.info("the good parts lie at any angle (orientation alignment %.2f): turned upright into a window of "
             "%.2f x %.2f of the frame's longer side, after which they %s one pose",
             as_captured["orientation_alignment"], upright.length, upright.width,
             "share" if aligned else "still do not share")
    return turned, upright, {"aligned": aligned, "orientation_alignment": round(alignment, 4),
                             "as_captured": as_captured}


def fit_images(
    embed: Callable[[list[np.ndarray]], Features], images: Sequence[np.ndarray], settings: FitSettings
) -> FitResult:
    """The whole few-shot fit from good RGB images."""
    parts = check_good_images(images)
    images, upright, pose = seen_pose(images, settings.upright)
    t0 = time.perf_counter()
    features = augmented_features(embed, images, settings.policy, settings.factor, settings.seed)
    timings = {"augment_embed": round(time.perf_counter() - t0, 4)}
    defects = None
    if make_detector(settings.detector, **settings.detector_params).needs_defects:
        t1 = time.perf_counter()
        defects = split_defects(embed(pseudo_defects(images, DEFECTS_PER_IMAGE, settings.seed)), len(images))
        timings["damage_embed"] = round(time.perf_counter() - t1, 4)
    result = fit_features(features, len(images), settings, defects, pose["aligned"])
    result.timings = {**timings, **result.timings}
    result.distinct_parts = parts.n_parts
    result.pose, result.upright = pose, upright
    return result
