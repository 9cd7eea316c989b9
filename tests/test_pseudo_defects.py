"""Synthetic damage on real good images (`real_set`): local, reproducible, every kind, any image layout."""

import numpy as np
import pytest

from edge_agent.capture.images import read_image
from edge_agent.learn.pseudo_defects import KINDS, pseudo_defects


@pytest.fixture(scope="module")
def good(real_set):
    return read_image(real_set.train_good[0])


def test_damage_is_local_and_reproducible(good):
    out = pseudo_defects([good, good], 3, seed=5)
    assert len(out) == 6
    for img in out:
        assert img.shape == good.shape and img.dtype == np.uint8
        changed = np.any(np.abs(img.astype(int) - good) > 8, axis=-1).mean()
        assert 0.0002 < changed < 0.15, changed  # a blemish, not a new image
    again = pseudo_defects([good, good], 3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    assert not np.array_equal(out[0], pseudo_defects([good], 3, seed=6)[0])
    assert not np.array_equal(out[0], out[3])  # the second image is damaged elsewhere


def test_every_kind_is_used_and_grayscale_works(good):
    gray = good[..., 0].copy()
    out = pseudo_defects([gray], len(KINDS), seed=0)
    assert [img.shape for img in out] == [gray.shape] * len(KINDS)
    assert all(not np.array_equal(img, gray) for img in out)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="per_image must be at least 1"):
        pseudo_defects([np.zeros((32, 32), np.uint8)], 0)
    with pytest.raises(ValueError, match="image 1: expected a uint8 image"):
        pseudo_defects([np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.float32)], 1)
    with pytest.raises(ValueError, match="at least 16 x 16"):
        pseudo_defects([np.zeros((8, 8, 3), np.uint8)], 1)
