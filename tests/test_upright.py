"""Parts at any angle turned upright and cropped to before embedding: on a part cut from a real image, laid on a
belt at known angles and places; through a fit, a saved detector file and the heat map's way back to the frame."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edge_agent.capture.images import read_image
from edge_agent.learn.upright import MARGIN, MIN_ELONGATION, Upright, judged_view, part_pose, upright_window
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.detectors.persistence import DetectorFileError, load_detector, save_detector
from edge_agent.learn.detectors import make_detector
from edge_agent.learn.fitting import FitSettings, fit_images, seen_pose
from tests.conftest import FEW_IMAGE_TARGET
from tests.synthetic import lying, part_from

PLACES = [(0, (200, 200)), (37, (220, 185)), (90, (170, 210)), (145, (210, 230)), (220, (180, 180)),
          (300, (225, 205)), (12, (190, 215)), (260, (205, 190))]


@pytest.fixture(scope="module")
def extractor(shipped_model) -> FeatureExtractor:
    return FeatureExtractor(shipped_model)


@pytest.fixture(scope="module")
def part(real_set) -> np.ndarray:
    return part_from(read_image(real_set.train_good[0]))


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_the_pose_of_a_part_is_where_and_how_it_lies(part):
    h, w = part.shape
    for degrees, centre in PLACES:
        pose = part_pose(lying(part, degrees, centre))
        # The box's middle is the part's middle (within the blur's few pixels); the axis is the shank's.
        assert math.dist((pose.x, pose.y), centre) < 6, (degrees, pose)
        turn = math.degrees(pose.angle) % 180
        assert min(abs(turn - (-degrees) % 180), 180 - abs(turn - (-degrees) % 180)) < 3, (degrees, pose)
        assert w <= pose.length < w + 40 and h <= pose.width < h + 40  # the edges' blur adds a little


def test_turned_upright_every_placement_of_the_part_looks_the_same(part):
    images = [lying(part, degrees, centre) for degrees, centre in PLACES]
    upright = upright_window(images)
    length, width = upright.size(images[0].shape)
    assert length >= MARGIN * part.shape[1] and width >= MARGIN * part.shape[0]
    windows = [upright.apply(image).image for image in images]
    assert all(win.shape == (width, length, 3) for win in windows)
    as_laid = min(corr(images[0], image) for image in images[1:])
    turned = min(corr(windows[0], win) for win in windows[1:])
    assert turned > 0.9 > 0.5 > as_laid  # the heavy end always on the same side: not a mirror image half the time


def test_dust_elsewhere_on_the_belt_moves_neither_the_window_nor_the_angle(part):
    clean = lying(part, 37, (220, 185))
    dusty = clean.copy()
    for x, y in ((20, 20), (380, 30), (30, 370)):
        dusty[y:y + 4, x:x + 4] = 40
    a, b = part_pose(clean), part_pose(dusty)
    assert math.dist((a.x, a.y), (b.x, b.y)) < 1 and abs(a.angle - b.angle) < 0.01 and abs(a.length - b.length) < 1


def test_a_blank_frame_has_no_part_and_is_left_as_it_is():
    pose = part_pose(np.full((120, 200, 3), 90, np.uint8))
    assert (pose.x, pose.y, pose.angle, pose.length, pose.width) == (100, 60, 0.0, 200, 120)


def test_the_window_never_outgrows_the_frame(part):
    upright = upright_window([lying(part, 45, (100, 100), side=200)])  # a belt too small to hold it upright
    assert upright.length == 1.0 and upright.size((200, 200)) == (200, round(200 * upright.width))


def test_the_window_is_the_same_share_of_a_frame_at_any_resolution(part):
    """A detector fitted on full frames judges a camera's smaller stream of the same scene alike."""
    frames = [lying(part, degrees, centre) for degrees, centre in PLACES]
    upright = upright_window(frames)
    full = upright.apply(frames[1]).image
    small = upright.apply(cv2.resize(frames[1], (200, 200), interpolation=cv2.INTER_AREA)).image
    assert abs(small.shape[1] * 2 - full.shape[1]) <= 2 and abs(small.shape[0] * 2 - full.shape[0]) <= 2
    assert corr(cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA), small) > 0.9


def test_a_heat_map_over_the_window_is_laid_back_where_the_part_lies(part):
    """The hot cell at the head's end of the window comes back over the head in the frame, wherever it lies."""
    for degrees, centre in PLACES[:4]:
        frame = lying(part, degrees, centre)
        turned = upright_window([frame]).apply(frame)
        grid = np.zeros((8, 16), np.float32)
        grid[4, 3] = 1.0  # left of the middle: where the head lies once upright
        back = turned.to_source(grid)
        y, x = np.unravel_index(int(np.argmax(back)), back.shape)
        head = (centre[0] + 100 * math.cos(math.radians(-degrees)), centre[1] + 100 * math.sin(math.radians(-degrees)))
        assert back.shape == frame.shape[:2]
        assert math.dist((x, y), head) < 40, (degrees, (x, y), head)


def test_the_window_survives_a_detector_file_and_a_forged_one_is_refused(tmp_path):
    assert Upright.from_metadata(Upright(0.84, 0.42).to_metadata()) == Upright(0.84, 0.42)
    assert Upright.from_metadata(None) is None
    for bad in ({"length": 0, "width": 0.5}, {"length": 1.5, "width": 0.5}, {"length": True, "width": 0.5},
                {"length": "1", "width": 0.5}, {"side": 0.4}, [0.3, 0.4]):
        with pytest.raises(ValueError, match="'upright'"):
            Upright.from_metadata(bad)
    rng = np.random.default_rng(0)
    detector = make_detector("mahalanobis").fit({"pooled/a": rng.normal(size=(12, 4)).astype(np.float32)})
    save_detector(tmp_path / "ok.edet", detector, {"upright": {"length": 0.84, "width": 0.42}})
    assert load_detector(tmp_path / "ok.edet").metadata["upright"] == {"length": 0.84, "width": 0.42}
    save_detector(tmp_path / "forged.edet", detector, {"upright": {"length": -1, "width": 0.42}})
    with pytest.raises(DetectorFileError, match="forged.edet.*'upright'"):
        load_detector(tmp_path / "forged.edet")


def test_parts_at_any_angle_are_fitted_upright_and_parts_in_one_pose_as_the_camera_sees_them(part, extractor):
    rng = np.random.default_rng(3)
    any_angle = [lying(part, d, (200 + int(dx), 200 + int(dy)))
                 for d, dx, dy in zip(rng.uniform(0, 360, 8), rng.integers(-20, 21, 8), rng.integers(-20, 21, 8))]
    one_pose = [lying(part, d, (200, 200)) for d in rng.uniform(-2, 2, 8)]
    turned, upright, pose = seen_pose(any_angle)
    assert upright is not None and not pose["as_captured"]["aligned"] and pose["aligned"]
    assert turned[0].shape == (*upright.size(any_angle[0].shape)[::-1], 3)
    as_seen, off, pose_off = seen_pose(any_angle, "off")  # `[detector] upright = "off"`: the line's choice
    assert off is None and not pose_off["aligned"] and all(a is b for a, b in zip(as_seen, any_angle))
    with pytest.raises(ValueError, match="upright must be one of auto, off, got 'sideways'"):
        seen_pose(any_angle, "sideways")
    kept, none, pose_kept = seen_pose(one_pose)
    assert none is None and pose_kept["aligned"] and "as_captured" not in pose_kept
    assert all(a is b for a, b in zip(kept, one_pose))

    settings = FitSettings(detector="mahalanobis", factor=1, max_folds=4, target_false_reject=FEW_IMAGE_TARGET)
    result = fit_images(extractor.embed, any_angle, settings)
    assert result.upright == upright and result.metadata(settings)["upright"] == upright.to_metadata()
    # The fitted detector judges a new placement of the same part like the ones it learned...
    fresh = [judged_view(lying(part, d, (200, 200)), result.metadata(settings))[0] for d in (75, 200)]
    scores = result.detector.score_samples(extractor.embed(fresh))
    assert np.all(scores < result.threshold), (scores, result.threshold)
    # ...and a scratched part, wherever it lies, not.
    broken = part.copy()
    cv2.line(broken, (30, 40), (170, 70), 255, 4)
    bad = result.detector.score_samples(extractor.embed([upright.apply(lying(broken, 75, (200, 200))).image]))
    assert bad[0] > result.threshold
    assert fit_images(extractor.embed, one_pose, settings).metadata(settings)["upright"] is None
    off = replace(settings, upright="off")
    assert fit_images(extractor.embed, any_angle, off).metadata(off)["upright"] is None


def test_round_parts_have_no_axis_to_turn_by_and_stay_as_the_camera_sees_them(part):
    """A disc (a cut of the real image inside a circle) at any angle: its edges spread alike in every direction."""
    side = part.shape[1]
    disc = np.zeros((side, side), np.uint8)
    cv2.circle(disc, (side // 2, side // 2), side // 2 - 2, 1, -1)
    disc = np.where(disc > 0, cv2.resize(part, (side, side)) // 2 + 30, 0).astype(np.uint8)
    frames = [lying(disc, degrees, centre) for degrees, centre in PLACES]
    assert all(part_pose(f).elongation < MIN_ELONGATION for f in frames)
    assert all(part_pose(lying(part, d, c)).elongation > MIN_ELONGATION for d, c in PLACES)
    assert upright_window(frames) is None
    images, upright, pose = seen_pose(frames)
    assert upright is None and not pose["aligned"] and all(a is b for a, b in zip(images, frames))
