"""Image-space augmentation of the few good images (Gutierrez et al. 2021, Sec. 3.2 and Table 4).

With 5-50 good parts the Gaussian is estimated from too few samples; the paper multiplies them by ``factor``
(10) augmented copies, keeping the originals. A policy lists which transforms suit a part: each selected
transform is applied to EVERY augmented copy with a random parameter (flips and 90-degree turns are random
choices), so a policy must only contain variations that a good part can really show on the line. A flip on a
part with printed text, or a rotation of a part whose orientation is checked, would teach the model that a
defect is normal.

Geometric transforms go through one ``cv2.warpAffine`` with a reflecting border by default, so that textures do
not get black corners that the feature extractor would read as a defect.

PRESETS: the 15 MVTec AD categories are the paper's Table 4, row for row (flips, translation, rotation range,
90-degree turns, zoom, add, multiply). The paper's translations are pixels of its 380 x 380 network input; a
preset stores them as such, with ``translate_ref_px=PAPER_INPUT_PX``, and the policy scales them at use to each
image's own width and height (a 5 px shift at 380 px is 1.3 % of the image, whatever the frame, ROI or model
input size: the model sees the same share of its input moved as the paper's did). Custom policies keep
``translate_ref_px=0``: ``translate_px`` is then in the image's own pixels, as before. A config override of
``translate_px`` on a preset keeps the preset's 380 px unit unless it also sets ``translate_ref_px = 0``.

The two generic presets were derived from Table 4 alone, by a rule fixed before any shared set was measured:

* ``texture``: the paper's row for carpet, tile, leather and grid (identical rows): a surface without layout,
  so flips and 90-degree turns are safe.
* ``object``: the paper's most conservative object row (capsule and pill: printed parts whose orientation is
  checked): small shifts, +-3 degrees, a 2 % zoom, no flips or turns. Any part with a layout can show these.

Which generic preset a new set gets is decided by that nature, not by results: ``texture`` only for a surface
with no layout; ``object`` for anything with one (solar cells with busbars, bottles with labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

BORDER_MODES = {
    "reflect": cv2.BORDER_REFLECT_101,
    "replicate": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,
}


def _as_range(value: Any, name: str) -> tuple[float, float] | None:
    """Accept 0/None (off) or a (lo, hi) pair: the forms a YAML/JSON config naturally contains."""
    if value is None or (np.isscalar(value) and not isinstance(value, str) and value == 0):
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be 0/None or a (low, high) pair, got {value!r}")
    lo, hi = (float(v) for v in value)
    if not (0 < lo <= hi) or not np.isfinite(hi):
        raise ValueError(f"{name} must satisfy 0 < low <= high, got ({lo}, {hi})")
    return lo, hi


def _as_shift(value: Any) -> int | tuple[int, int]:
    """An integer (both axes) or an (x, y) pair of integers >= 0; a pair with equal values becomes one integer."""
    pair = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"translate_px must be an integer number of pixels or an (x, y) pair, got {value!r}")
        if v < 0:
            raise ValueError(f"translate_px must be >= 0, got {value!r}")
    if len(pair) == 1 or pair[0] == pair[1]:
        return int(pair[0])
    return int(pair[0]), int(pair[1])


#: The paper's network input (EfficientNet-B4, 380 x 380): Table 4's translations are pixels of it.
PAPER_INPUT_PX = 380


@dataclass(frozen=True)
class AugmentationPolicy:
    """Which transforms to apply to every augmented copy, and their ranges.

    hflip, vflip : mirror with probability 1/2 per copy
    rot90 : turn by a random multiple of 90 degrees (only 0/180 on non-square images, to keep the shape)
    translate_px : shift drawn uniformly in +-translate_px pixels, independently in x and y; one integer for both
        axes or an (x, y) pair (the paper's zipper moves along x only)
    translate_ref_px : 0: translate_px is in the image's own pixels. > 0: translate_px is measured on an image
        translate_ref_px wide and high (the paper's 380 px input) and scaled to each image's width and height
    rotate_deg : rotation drawn uniformly in +-rotate_deg degrees about the image centre (at most 180)
    zoom : (low, high) scale factor range, or None
    brightness_add : offset drawn uniformly in +-brightness_add grey levels (0-255 scale)
    brightness_mul : (low, high) gain range, or None
    border : how warpAffine fills uncovered pixels: "reflect" (default), "replicate" or "constant"
    border_value : grey level used with border="constant"
    """

    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    translate_px: int | tuple[int, int] = 0
    translate_ref_px: int = 0
    rotate_deg: float = 0.0
    zoom: tuple[float, float] | None = None
    brightness_add: float = 0.0
    brightness_mul: tuple[float, float] | None = None
    border: str = "reflect"
    border_value: int = 0

    def __post_init__(self) -> None:
        for name in ("hflip", "vflip", "rot90"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "translate_px", _as_shift(self.translate_px))
        ref = self.translate_ref_px
        if isinstance(ref, bool) or not isinstance(ref, (int, np.integer)) or ref < 0:
            raise ValueError(f"translate_ref_px must be an integer >= 0 (0: the image's own pixels), got {ref!r}")
        if not (0 <= float(self.rotate_deg) <= 180):
            raise ValueError(f"rotate_deg is a +- range and must be within [0, 180], got {self.rotate_deg}")
        if not (0 <= float(self.brightness_add) <= 255):
            raise ValueError(f"brightness_add is a +- range of grey levels within [0, 255], got {self.brightness_add}")
        object.__setattr__(self, "zoom", _as_range(self.zoom, "zoom"))
        object.__setattr__(self, "brightness_mul", _as_range(self.brightness_mul, "brightness_mul"))
        if self.border not in BORDER_MODES:
            raise ValueError(f"border must be one of {sorted(BORDER_MODES)}, got {self.border!r}")
        if not (0 <= int(self.border_value) <= 255):
            raise ValueError(f"border_value must be a grey level in [0, 255], got {self.border_value}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentationPolicy:
        """Build from a config/JSON mapping; unknown keys are errors: a typo would silently disable a transform."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown augmentation keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (ranges as lists), e.g. to store with a fitted model."""
        out = dataclasses.asdict(self)
        for name in ("zoom", "brightness_mul", "translate_px"):
            if isinstance(out[name], tuple):
                out[name] = list(out[name])
        return out

    def max_shift(self, width: int, height: int) -> tuple[float, float]:
        """The largest shift, in pixels of a ``width`` x ``height`` image, along x and y."""
        tx, ty = self.translate_px if isinstance(self.translate_px, tuple) else (self.translate_px,) * 2
        if not self.translate_ref_px:
            return float(tx), float(ty)
        return tx * width / self.translate_ref_px, ty * height / self.translate_ref_px

    @property
    def is_geometric(self) -> bool:
        return bool(self.translate_px or self.rotate_deg or self.zoom)


def _paper(**kwargs: Any) -> AugmentationPolicy:
    """A row of the paper's Table 4: translations in pixels at its 380 px input; every row adds a value in
    (-10, 10) and multiplies by a factor in (0.9, 1.1)."""
    return AugmentationPolicy(translate_ref_px=PAPER_INPUT_PX, brightness_add=10, brightness_mul=(0.9, 1.1), **kwargs)


_ZOOM = (0.98, 1.02)
PRESETS: dict[str, AugmentationPolicy] = {
    # Generic starting points, each a Table 4 row chosen by the part's nature (see the module docstring).
    "object": _paper(translate_px=10, rotate_deg=3, zoom=_ZOOM),  # = capsule, pill
    "texture": _paper(hflip=True, vflip=True, translate_px=5, rot90=True),  # = carpet, tile, leather, grid
    # Gutierrez et al. 2021, Table 4, one row per MVTec AD category.
    "carpet": _paper(hflip=True, vflip=True, translate_px=5, rot90=True),
    "tile": _paper(hflip=True, vflip=True, translate_px=5, rot90=True),
    "leather": _paper(hflip=True, vflip=True, translate_px=5, rot90=True),
    "grid": _paper(hflip=True, vflip=True, translate_px=5, rot90=True),
    "wood": _paper(hflip=True, vflip=True, translate_px=5, rotate_deg=2),
    "capsule": _paper(translate_px=10, rotate_deg=3, zoom=_ZOOM),
    "cable": _paper(translate_px=10, rotate_deg=5),
    "pill": _paper(translate_px=10, rotate_deg=3, zoom=_ZOOM),
    "transistor": _paper(hflip=True, translate_px=5, rotate_deg=2),
    "metal_nut": _paper(translate_px=10, rotate_deg=10, rot90=True),
    "toothbrush": _paper(hflip=True, translate_px=10),
    "screw": _paper(hflip=True, vflip=True, translate_px=10, rotate_deg=10, rot90=True, zoom=_ZOOM),
    "hazelnut": _paper(hflip=True, vflip=True, translate_px=10, rotate_deg=20, rot90=True, zoom=_ZOOM),
    "zipper": _paper(hflip=True, translate_px=(30, 0)),
    "bottle": _paper(translate_px=5, rotate_deg=10, rot90=True),
}


def group_indices(n_originals: int, factor: int) -> list[np.ndarray]:
    """Indices, in `augment`'s output order, of each original followed by its own augmented copies.

    Leave-one-out threshold calibration must hold out an image together with its copies (a copy of the
    held-out image left in the training set would make it look normal); this is the single place that knows
    the layout ``[originals..., copies of original 0..., copies of original 1..., ...]``.
    """
    return [
        np.concatenate(([i], n_originals + i * factor + np.arange(factor))).astype(np.intp) for i in range(n_originals)
    ]


def _check_image(img: Any, index: int) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ValueError(f"image {index} must be a uint8 HxW or HxWxC array, got {arr.dtype} {arr.shape}")
    return arr


def _augment_one(img: np.ndarray, policy: AugmentationPolicy, rng: np.random.Generator) -> np.ndarray:
    out = img
    if policy.hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    if policy.vflip and rng.random() < 0.5:
        out = out[::-1]
    if policy.rot90:
        square = out.shape[0] == out.shape[1]
        out = np.rot90(out, k=int(rng.integers(4)) if square else 2 * int(rng.integers(2)))
    if policy.is_geometric:
        h, w = out.shape[:2]
        angle = rng.uniform(-policy.rotate_deg, policy.rotate_deg) if policy.rotate_deg else 0.0
        scale = rng.uniform(*policy.zoom) if policy.zoom else 1.0
        mx, my = policy.max_shift(w, h)
        tx, ty = rng.uniform(-1.0, 1.0, size=2) * (mx, my) if policy.translate_px else (0.0, 0.0)
        M = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
        M[:, 2] += (tx, ty)
        border_value = (policy.border_value,) * 4
        out = cv2.warpAffine(
            np.ascontiguousarray(out),
            M,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=BORDER_MODES[policy.border],
            borderValue=border_value,
        ).reshape(out.shape)
    if policy.brightness_mul or policy.brightness_add:
        gain = rng.uniform(*policy.brightness_mul) if policy.brightness_mul else 1.0
        offset = rng.uniform(-policy.brightness_add, policy.brightness_add) if policy.brightness_add else 0.0
        out = np.clip(np.rint(out.astype(np.float32) * gain + offset), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def augment(
    images: Sequence[np.ndarray], policy: AugmentationPolicy, factor: int = 10, seed: int = 0
) -> list[np.ndarray]:
    """Originals first (unchanged), then ``factor`` augmented copies of each original, in order.

    Returns ``len(images) * (factor + 1)`` images; `group_indices` maps them back to their original. The same
    seed gives the same copies, so a retrain can be reproduced from the stored frames and policy.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 0:
        raise ValueError(f"factor must be an integer >= 0, got {factor!r}")
    originals = [_check_image(img, i) for i, img in enumerate(images)]
    rng = np.random.default_rng(seed)
    copies = [_augment_one(img, policy, rng) for img in originals for _ in range(factor)]
    return originals + copies
