"""Image-space augmentation: layout, reproducibility, borders, policy validation, presets."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from edge_agent.learn.augment import PRESETS, AugmentationPolicy, augment, group_indices

MVTEC_CATEGORIES = (
    "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw tile toothbrush transistor wood zipper"
).split()


def texture(seed: int, shape: tuple[int, ...] = (64, 64, 3)) -> np.ndarray:
    """A bright random texture: any black pixel in an augmented copy can only come from a border."""
    return np.random.default_rng(seed).integers(120, 220, size=shape, dtype=np.uint8)


def test_layout_originals_first_and_count() -> None:
    images = [texture(i) for i in range(3)]
    policy = AugmentationPolicy(hflip=True, translate_px=4, brightness_add=5)
    out = augment(images, policy, factor=4, seed=0)
    assert len(out) == 3 * (4 + 1)
    for original, returned in zip(images, out[:3]):
        assert np.array_equal(original, returned)
    assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in out)
    only_originals = augment(images, policy, factor=0)
    assert len(only_originals) == 3 and all(np.array_equal(a, b) for a, b in zip(only_originals, images))
    groups = group_indices(3, 4)
    assert [g.tolist() for g in groups] == [[0, 3, 4, 5, 6], [1, 7, 8, 9, 10], [2, 11, 12, 13, 14]]


def test_reproducible_with_seed() -> None:
    images = [texture(0), texture(1)]
    policy = PRESETS["screw"]
    a = augment(images, policy, factor=5, seed=7)
    b = augment(images, policy, factor=5, seed=7)
    c = augment(images, policy, factor=5, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a[2:], c[2:]))


def test_copies_differ_and_flips_are_exact() -> None:
    img = texture(2)
    out = augment([img], AugmentationPolicy(hflip=True, vflip=True), factor=20, seed=0)[1:]
    variants = [img, img[:, ::-1], img[::-1], img[::-1, ::-1]]
    assert all(any(np.array_equal(o, v) for v in variants) for o in out)
    assert len({o.tobytes() for o in out}) > 1


def test_reflect_border_leaves_no_black_corners() -> None:
    img = texture(3)
    policy = AugmentationPolicy(rotate_deg=30, translate_px=8, zoom=(0.8, 0.9))
    for border in ("reflect", "replicate"):
        out = augment([img], AugmentationPolicy(**{**policy.to_dict(), "border": border}), factor=10, seed=1)
        assert min(int(o.min()) for o in out[1:]) >= 100, border
    constant = augment([img], AugmentationPolicy(**{**policy.to_dict(), "border": "constant"}), factor=10, seed=1)
    assert min(int(o.min()) for o in constant[1:]) == 0  # the contrast case the default avoids


def test_rot90_on_non_square_keeps_shape_and_grayscale_works() -> None:
    img = texture(4, (40, 64, 3))
    out = augment([img], AugmentationPolicy(rot90=True), factor=8, seed=0)
    assert all(o.shape == img.shape for o in out)
    gray = texture(5, (32, 32))
    out = augment([gray], AugmentationPolicy(rotate_deg=10, translate_px=3), factor=3)
    assert all(o.shape == (32, 32) for o in out)
    single = texture(6, (32, 32, 1))
    assert all(o.shape == (32, 32, 1) for o in augment([single], AugmentationPolicy(rotate_deg=10), factor=2))


def test_brightness_stays_in_range_and_changes_level() -> None:
    img = np.full((16, 16, 3), 250, dtype=np.uint8)
    out = augment([img], AugmentationPolicy(brightness_mul=(1.1, 1.2)), factor=3)
    assert all(o.max() == 255 for o in out[1:])
    dark = augment([img], AugmentationPolicy(brightness_add=50, brightness_mul=(0.5, 0.6)), factor=3)
    assert all(o.mean() < 200 for o in dark[1:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"translate_px": -1}, "translate_px must be >= 0"),
        ({"translate_px": 2.5}, "translate_px must be an integer"),
        ({"rotate_deg": 200}, "rotate_deg"),
        ({"zoom": (1.2, 0.9)}, "zoom must satisfy"),
        ({"zoom": 1.1}, "zoom must be 0/None"),
        ({"brightness_mul": (0, 1)}, "brightness_mul"),
        ({"brightness_add": 300}, "brightness_add"),
        ({"border": "wrap"}, "border must be one of"),
        ({"hflip": "yes"}, "hflip must be true or false"),
    ],
)
def test_policy_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentationPolicy(**kwargs)


def test_policy_dict_round_trip_and_unknown_keys() -> None:
    policy = AugmentationPolicy(hflip=True, zoom=[0.9, 1.1], brightness_mul=(0.9, 1.0), border="replicate")
    assert policy.zoom == (0.9, 1.1)
    data = json.loads(json.dumps(policy.to_dict()))
    assert AugmentationPolicy.from_dict(data) == policy
    assert AugmentationPolicy.from_dict({"zoom": 0, "brightness_mul": None}).zoom is None
    with pytest.raises(ValueError, match="unknown augmentation keys.*'flip'"):
        AugmentationPolicy.from_dict({"flip": True})
    with pytest.raises(ValueError, match="factor"):
        augment([texture(0)], policy, factor=-1)
    with pytest.raises(ValueError, match="image 1 must be a uint8"):
        augment([texture(0), np.zeros((4, 4), dtype=np.float32)], policy)


def test_presets_cover_mvtec_and_generic() -> None:
    assert set(PRESETS) == set(MVTEC_CATEGORIES) | {"object", "texture"}
    for name, policy in PRESETS.items():
        assert AugmentationPolicy.from_dict(policy.to_dict()) == policy, name
        # Every row of the paper's Table 4 adds (-10, 10) and multiplies by (0.9, 1.1), at its 380 px input.
        assert policy.brightness_add == 10 and policy.brightness_mul == (0.9, 1.1), name
        assert policy.translate_ref_px == 380, name
    # Parts with print or a checked orientation are neither mirrored nor turned (Table 4: capsule, pill, cable).
    for name in ("capsule", "pill", "cable", "object"):
        assert not (PRESETS[name].hflip or PRESETS[name].vflip or PRESETS[name].rot90), name


# Rows of the paper's Table 4 (Gutierrez et al. 2021, appendix; transcribed in the project's shared notes), literally:
# flip h, flip v, translate (x, y) at 380 px, rotate +-deg, rot 90s, zoom.
TABLE_4 = {
    "carpet": (True, True, 5, 0.0, True, None),
    "wood": (True, True, 5, 2.0, False, None),
    "capsule": (False, False, 10, 3.0, False, (0.98, 1.02)),
    "cable": (False, False, 10, 5.0, False, None),
    "transistor": (True, False, 5, 2.0, False, None),
    "metal_nut": (False, False, 10, 10.0, True, None),
    "toothbrush": (True, False, 10, 0.0, False, None),
    "screw": (True, True, 10, 10.0, True, (0.98, 1.02)),
    "hazelnut": (True, True, 10, 20.0, True, (0.98, 1.02)),
    "zipper": (True, False, (30, 0), 0.0, False, None),
    "bottle": (False, False, 5, 10.0, True, None),
}


@pytest.mark.parametrize("name", sorted(TABLE_4))
def test_presets_are_the_papers_table_4(name: str) -> None:
    p = PRESETS[name]
    assert (p.hflip, p.vflip, p.translate_px, p.rotate_deg, p.rot90, p.zoom) == TABLE_4[name]


def test_generic_presets_are_table_4_rows() -> None:
    assert PRESETS["texture"] == PRESETS["carpet"] == PRESETS["tile"] == PRESETS["leather"] == PRESETS["grid"]
    assert PRESETS["object"] == PRESETS["capsule"] == PRESETS["pill"]


def _shift_of_a_dot(policy: AugmentationPolicy, size: tuple[int, int], copies: int = 200) -> tuple[float, float]:
    """Largest |dx|, |dy| by which a one-pixel dot at the centre moves over many copies."""
    h, w = size
    img = np.zeros((h, w), np.uint8)
    img[h // 2, w // 2] = 255
    moved = [np.unravel_index(int(np.argmax(o)), o.shape) for o in augment([img], policy, copies, seed=0)[1:]]
    return (max(abs(x - w // 2) for _, x in moved), max(abs(y - h // 2) for y, _ in moved))


def test_translation_scales_from_the_papers_380_px_to_each_image() -> None:
    paper = AugmentationPolicy(translate_px=10, translate_ref_px=380, border="constant")
    assert paper.max_shift(380, 380) == (10, 10)
    assert paper.max_shift(760, 190) == (20, 5)  # per axis: the paper resized every image to 380 x 380
    dx, dy = _shift_of_a_dot(paper, (190, 760))
    assert 17 <= dx <= 20 and 4 <= dy <= 5
    own = AugmentationPolicy(translate_px=10, border="constant")  # translate_ref_px=0: the image's own pixels
    assert own.max_shift(760, 190) == (10, 10)
    dx, dy = _shift_of_a_dot(own, (190, 760))
    assert 8 <= dx <= 10 and 8 <= dy <= 10
    along_x = AugmentationPolicy(translate_px=(30, 0), translate_ref_px=380, border="constant")
    dx, dy = _shift_of_a_dot(along_x, (380, 380))
    assert 25 <= dx <= 30 and dy == 0


def test_translate_forms() -> None:
    assert AugmentationPolicy(translate_px=(4, 4)).translate_px == 4  # one canonical form
    assert AugmentationPolicy(translate_px=[30, 0]).translate_px == (30, 0)
    assert AugmentationPolicy.from_dict({"translate_px": [30, 0]}).to_dict()["translate_px"] == [30, 0]
    for bad in ((1, 2, 3), (1.5, 2), (-1, 0), "5"):
        with pytest.raises(ValueError, match="translate_px"):
            AugmentationPolicy(translate_px=bad)
    with pytest.raises(ValueError, match="translate_ref_px"):
        AugmentationPolicy(translate_ref_px=-380)


def test_on_a_real_image(real_set) -> None:
    img = cv2.imread(str(real_set.train_good[0]), cv2.IMREAD_COLOR)
    out = augment([img], PRESETS["bottle"], factor=3, seed=0)
    assert len(out) == 4 and all(o.shape == img.shape for o in out)
    # A turned part keeps its overall brightness: the reflect border adds no black wedges.
    assert all(abs(float(o.mean()) - float(img.mean())) < 0.1 * float(img.mean()) + 5 for o in out[1:])
    # The reference: the same turn with a black border darkens the corners it uncovers.
    black = augment([img], dataclasses.replace(PRESETS["bottle"], border="constant"), factor=3, seed=0)
    assert any(float(b.mean()) < float(o.mean()) for b, o in zip(black[1:], out[1:]))
