"""Distinct parts among good frames (`learn.distinct`, `fitting.check_good_images`) on real images (`real_set`:
MVTec bottle, or elpv solar cells): the same part seen again, differing only by sensor noise, is one part."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge_agent.capture.images import read_image
from edge_agent.learn.distinct import SAME_PART_RATIO, distinct_parts, frame_samples, pair_ratio
from edge_agent.learn.fitting import FitError, check_good_images, min_distinct_parts


def noisy(im: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The same part, the camera re-triggered: independent Gaussian sensor noise, rounded and clipped to 8 bits."""
    return np.clip(np.rint(im + rng.normal(0, sigma, im.shape)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def parts(real_set) -> list[np.ndarray]:
    assert len(real_set.train_good) >= 12, f"{real_set.name} holds fewer than 12 good training images"
    return [read_image(p) for p in real_set.train_good[:12]]


def test_the_issue_ten_noisy_copies_of_one_part_are_refused(parts):
    rng = np.random.default_rng(0)
    copies = [noisy(parts[0], 2.0, rng) for _ in range(10)]
    with pytest.raises(FitError, match=r"^10 frames show 1 distinct part \(frames 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 show "
                                       r"the same part.*\): show different parts \(at least 5\)"):
        check_good_images(copies)


def test_ten_distinct_real_parts_fit(parts, caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.learn.fitting"):
        result = check_good_images(parts[:10])
    assert (result.n_frames, result.n_parts, result.pairs) == (10, 10, [])
    assert not caplog.records


def test_one_part_shown_twice_passes_with_a_warning_naming_the_frames(parts, caplog):
    frames = parts[:9] + [noisy(parts[3], 2.0, np.random.default_rng(1))]
    with caplog.at_level(logging.WARNING, logger="edge_agent.learn.fitting"):
        result = check_good_images(frames)
    assert result.n_parts == 9 and result.repeated == [[3, 9]]
    assert "10 frames show 9 distinct parts (frames 3, 9 show the same part" in caplog.text


def test_too_many_repeats_are_refused_with_the_count_needed(parts):
    rng = np.random.default_rng(2)
    frames = parts[:4] + [noisy(parts[0], 1.0, rng) for _ in range(6)]  # 10 frames, 4 parts: fewer than half
    with pytest.raises(FitError, match=r"10 frames show 4 distinct parts .*at least 5\)"):
        check_good_images(frames)
    assert min_distinct_parts(10) == 5 and min_distinct_parts(3) == 2 and min_distinct_parts(2) == 2


def test_duplicates_are_grouped_transitively():
    # a ~ b and b ~ c by noise; a and c not directly (a smooth scene, noise sigma 1 and 1 and 1)
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:256, 0:256]
    scene = (128 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.float64)
    other = (128 + 60 * np.sin(x / 5.0 + 1) * np.cos(y / 7.0)).astype(np.float64)
    frames = [noisy(scene, 1.0, rng), noisy(other, 1.0, rng), noisy(scene, 1.0, rng), noisy(scene, 1.0, rng)]
    result = distinct_parts(frames)
    assert result.groups == [[0, 2, 3], [1]] and result.n_parts == 2


def test_the_rule_sits_between_noise_and_distinct_parts_with_margin(parts):
    """The measured gap on this set: every distinct pair far above the limit, every noisy copy well below it."""
    samples = [frame_samples(im) for im in parts]
    distinct = min(pair_ratio(samples[i], samples[j]) for i in range(len(parts)) for j in range(i + 1, len(parts)))
    rng = np.random.default_rng(4)
    same = max(pair_ratio(frame_samples(noisy(parts[k], s, rng)), frame_samples(noisy(parts[k], s, rng)))
               for k in range(3) for s in (1.0, 2.0, 4.0))
    assert distinct > 2 * SAME_PART_RATIO, distinct
    assert same < SAME_PART_RATIO / 1.3, same


def test_a_frame_of_pure_texture_is_never_called_a_duplicate():
    # Random texture: its "noise" is as large as its contrast, so noise explains any difference; not judged.
    rng = np.random.default_rng(5)
    a, b = (rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2))
    assert distinct_parts([a, b]).n_parts == 2

