"""The alert picture's heat map is anchored to the threshold: its colours mean the same on every frame."""

import cv2
import numpy as np

from edge_agent.deliver.snapshot import SATURATION, alert_picture, contact_sheet, overlay


def _peak_colour(level: float, magnitude: float = 1.0) -> np.ndarray:
    grey = np.full((60, 80, 3), 128, np.uint8)
    heat = np.zeros((6, 8), np.float32)
    heat[2, 3] = 1.0 * magnitude
    picture = overlay(grey, heat, level, alpha=1.0)  # colour only, so the test reads the colour map itself
    y, x = np.unravel_index(np.argmax(cv2.resize(heat, (80, 60))), (60, 80))
    return picture[y, x].astype(int)


def red_minus_blue(rgb: np.ndarray) -> int:
    return int(rgb[0]) - int(rgb[2])


def test_the_colour_follows_the_score_over_the_threshold_not_the_maps_own_units():
    # A detector's units (patch distances, ratios) do not change the picture: only score / threshold does.
    assert np.array_equal(_peak_colour(0.8, magnitude=1.0), _peak_colour(0.8, magnitude=37.0))
    # A part well below its threshold is not drawn red; one well above it is; the threshold sits in between.
    below, at, above = _peak_colour(0.3), _peak_colour(1.0), _peak_colour(SATURATION)
    assert red_minus_blue(below) < 0 < red_minus_blue(at) and red_minus_blue(above) > 0
    assert not np.array_equal(at, above)  # JET's end: dark red, past the threshold's yellow-orange
    assert np.array_equal(_peak_colour(SATURATION), _peak_colour(10 * SATURATION))  # saturates, no wrap-around


def test_an_all_zero_map_draws_nothing_and_the_map_stays_inside_its_box():
    grey = np.full((10, 10, 3), 128, np.uint8)
    flat = overlay(grey, np.zeros((3, 3), np.float32), 2.0, alpha=1.0)
    assert np.array_equal(flat, overlay(grey, np.zeros((3, 3), np.float32), 0.1, alpha=1.0))  # no evidence anywhere
    picture = alert_picture(grey, np.ones((3, 3), np.float32), (2, 2, 5, 5), 1.0)
    assert picture.shape == grey.shape and (picture[0] == 128).all()  # away from the box: the frame untouched


def test_a_contact_sheet_shows_every_training_part_once_in_a_square_grid():
    parts = [np.full((300, 200, 3), 20 * i, np.uint8) for i in range(1, 11)]  # ten distinct grey levels
    sheet = contact_sheet(parts, 960)
    assert sheet.shape == (3 * 240, 4 * 240, 3)  # 10 parts: 4 columns x 3 rows of 240 px tiles
    centres = [sheet[(i // 4) * 240 + 120, (i % 4) * 240 + 120] for i in range(10)]
    assert [int(c[0]) for c in centres] == [20 * i for i in range(1, 11)]  # each part in its place, in order
    assert int(sheet[2 * 240 + 120, 3 * 240 + 120, 0]) == 40  # the 12th tile is empty background


def test_a_contact_sheet_of_many_parts_stays_within_its_width():
    sheet = contact_sheet([np.zeros((5000, 40), np.uint8)] * 500, 960)  # grey, thin, and many
    assert sheet.shape[1] <= 960 and sheet.shape[0] <= 960


def test_a_part_over_a_zero_threshold_is_drawn_at_full_evidence():
    # A threshold of 0 (set by hand) makes score / threshold infinite: the hottest spot is the hottest colour.
    assert np.array_equal(_peak_colour(float("inf")), _peak_colour(SATURATION))
