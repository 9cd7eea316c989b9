"""The pose test on real images: the same part turned at random angles is unaligned, lightly moved it is not;
and an unaligned fit leaves the combined detector to its pooled (Gaussian) part."""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.capture.images import read_image
from edge_agent.learn.alignment import is_aligned, orientation_alignment, share_one_pose
from edge_agent.learn.detectors import make_detector


def turned(image: np.ndarray, degrees: float, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[:, 2] += shift
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def striped(real: np.ndarray) -> np.ndarray:
    """A real image with a clear dominant orientation (a part with a long axis), whatever the data set."""
    grey = cv2.cvtColor(real, cv2.COLOR_RGB2GRAY) if real.ndim == 3 else real
    h, w = grey.shape
    stripes = (np.sin(np.arange(w) / 6.0)[None, :] * 60).astype(np.float32)
    return np.clip(grey.astype(np.float32) * 0.5 + 64 + stripes, 0, 255).astype(np.uint8)


def test_parts_at_any_angle_are_unaligned_and_parts_in_one_pose_are_not(real_set):
    part = striped(read_image(real_set.train_good[0]))
    rng = np.random.default_rng(0)
    one_pose = [turned(part, rng.uniform(-3, 3), tuple(rng.integers(-8, 9, 2))) for _ in range(10)]
    any_angle = [turned(part, angle) for angle in rng.uniform(0, 180, 10)]
    aligned, r_one = share_one_pose(one_pose)
    unaligned, r_any = share_one_pose(any_angle)
    assert aligned and r_one > 0.9
    assert not unaligned and r_any < 0.68  # Rayleigh's bound for 10 images at p = 0.01
    assert orientation_alignment([part]) == 1.0  # one image agrees with itself


def test_rayleighs_bound_tightens_with_more_images():
    assert is_aligned(0.5, 50) and not is_aligned(0.5, 10)  # sqrt(ln 100 / n): 0.30 for 50, 0.68 for 10
    # Four images cannot show a shared pose at p = 0.01 (the bound exceeds 1): no evidence, no change.
    assert is_aligned(0.1, 4) and not is_aligned(0.1, 5)


def test_an_unaligned_fit_leaves_the_combined_detector_to_its_pooled_part():
    rng = np.random.default_rng(1)
    feats = {"pooled/a": rng.normal(size=(12, 8)).astype(np.float32),
             "spatial/b": rng.normal(size=(12, 4, 4, 6)).astype(np.float32)}
    damaged = [{k: v[i:i + 1] * 3 for k, v in feats.items()} for i in range(6)]
    groups = [np.array([i, i + 6]) for i in range(6)]
    both = make_detector("combined", max_folds=3).fit(feats, groups=groups, defects=damaged)
    gaussian_only = make_detector("combined", max_folds=3).fit(feats, groups=groups, defects=damaged, aligned=False)
    assert both.weights_[1] > 0  # aligned: the damage decides, the patch memory has a say
    assert gaussian_only.weights_.tolist() == [1.0, 0.0]
    assert not gaussian_only.supports_heatmaps  # no say, no heat map
