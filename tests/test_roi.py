"""The region of interest: parsed with named errors, the same box for pixels and fractions, refused when a
detector was fitted on another region."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.capture.roi import Roi, RoiError, fitted_roi_mismatch
from edge_agent.config import ConfigError, config_from_dict


def test_pixels_and_fractions_give_the_same_box() -> None:
    frame = np.zeros((960, 1280, 3), np.uint8)
    frame[240:720, 320:960] = 200  # the part: the middle half of each side
    by_pixels, by_fractions = Roi.parse([320, 240, 640, 480]), Roi.parse([0.25, 0.25, 0.5, 0.5])
    assert by_pixels.box(frame.shape) == by_fractions.box(frame.shape) == (320, 240, 640, 480)
    assert by_pixels.crop(frame).shape == (480, 640, 3) and by_pixels.crop(frame).min() == 200
    assert Roi.parse([]) is None


@pytest.mark.parametrize("values, fragment", [
    ([1, 2, 3], "4 numbers"), ([0, 0, 0, 10], "width, height > 0"), ([-1, 0, 10, 10], ">= 0"),
    ([0.5, 0.5, 0.6, 0.2], "<= 1"), ([10.5, 0, 100, 100], "whole numbers"),
])
def test_malformed_regions_are_refused_saying_why(values, fragment) -> None:
    with pytest.raises(RoiError, match=fragment):
        Roi.parse(values)
    with pytest.raises(ConfigError, match=r"\[source\] roi: .*" + fragment):
        config_from_dict({"source": {"path": ".", "roi": values}})


def test_a_region_beyond_the_frame_is_named() -> None:
    with pytest.raises(RoiError, match=r"reaches beyond the 640 x 480 frame"):
        Roi.parse([600, 0, 100, 100]).crop(np.zeros((480, 640, 3), np.uint8))


def test_a_detector_fitted_on_another_region_must_not_judge() -> None:
    assert fitted_roi_mismatch([], []) is None
    assert fitted_roi_mismatch([0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]) is None
    assert "fitted again" in fitted_roi_mismatch([], [0.0, 0.0, 100.0, 100.0])
    assert "fitted again" in fitted_roi_mismatch([0, 0, 100, 100], [])
