"""Image-space augmentation of the few good images (Gutierrez et al. 2021, Sec. 3.2 and Table 4).

With 5-50 good parts the Gaussian is estimated from too few samples; the paper multiplies them by ``factor``
(10) augmented copies, keeping the originals. A policy lists which transforms suit a part: each selected
transform is applied to EVERY augmented copy with a random parameter (flips and 90-degree turns are random
choices), so a policy must only contain variations that a good part can really show on the line. A flip on a
part with printed text, or a rotation of a part whose orientation is checked, would teach the model that a
defect is normal.

Geometric transforms go through one ``cv2.warpAffine`` with a reflecting border by default, so that textures do
not get black corners that the feature extractor would read as a defect.

PRESETS: the per-category values below are NOT verified against the paper's Table 4 (the table could not be
consulted while writing this). They are plausible policies derived from each MVTec AD category's nature:
rotation-invariant textures and round parts get flips and 90-degree turns, parts with print, a chirality or a
checked orientation (capsule, pill, cable, transistor, metal_nut) get small translations/rotations only. Pixel
amounts assume frames of roughly 512 x 512. Check them against Table 4 before quoting them as the paper's.
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


@dataclass(frozen=True)
class AugmentationPolicy:
    """Which transforms to apply to every augmented copy, and their ranges.

    hflip, vflip : mirror with probability 1/2 per copy
    rot90 : turn by a random multiple of 90 degrees (only 0/180 on non-square images, to keep the shape)
    translate_px : shift drawn uniformly in +-translate_px pixels, independently in x and y
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
    translate_px: int = 0
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
        if isinstance(self.translate_px, bool) or not isinstance(self.translate_px, (int, np.integer)):
            raise ValueError(f"translate_px must be an integer number of pixels, got {self.translate_px!r}")
        if self.translate_px < 0:
            raise ValueError(f"translate_px must be >= 0, got {self.translate_px}")
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
        for name in ("zoom", "brightness_mul"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @property
    def is_geometric(self) -> bool:
        return bool(self.translate_px or self.rotate_deg or self.zoom)


PRESETS: dict[str, AugmentationPolicy] = {
    # Generic starting points.
    "object": AugmentationPolicy(translate_px=10, rotate_deg=3, brightness_add=10, brightness_mul=(0.95, 1.05)),
    "texture": AugmentationPolicy(hflip=True, vflip=True, rot90=True, brightness_add=10, brightness_mul=(0.95, 1.05)),
    # MVTec AD categories (plausible, NOT verified against the paper's Table 4; see the module docstring).
    "bottle": AugmentationPolicy(hflip=True, vflip=True, rot90=True, rotate_deg=10),  # round, seen from above
    "cable": AugmentationPolicy(translate_px=8, rotate_deg=3),  # wire colour order is checked: no flips
    "capsule": AugmentationPolicy(translate_px=5, rotate_deg=2),  # printed "500": no flips or turns
    "carpet": AugmentationPolicy(hflip=True, vflip=True, rot90=True, brightness_add=8),
    "grid": AugmentationPolicy(hflip=True, vflip=True, rot90=True),
    "hazelnut": AugmentationPolicy(hflip=True, vflip=True, rot90=True, rotate_deg=180),  # any orientation
    "leather": AugmentationPolicy(hflip=True, vflip=True, rot90=True, brightness_add=8),
    "metal_nut": AugmentationPolicy(translate_px=5),  # "flip" is a defect class: no mirroring
    "pill": AugmentationPolicy(translate_px=5),  # printed "FF", checked orientation
    "screw": AugmentationPolicy(rot90=True, rotate_deg=180, translate_px=10),  # random pose; thread chirality kept
    "tile": AugmentationPolicy(hflip=True, vflip=True, rot90=True, brightness_add=8),
    "toothbrush": AugmentationPolicy(hflip=True, translate_px=5),  # upright, left-right symmetric
    "transistor": AugmentationPolicy(translate_px=5),  # misplaced/rotated parts are defects
    "wood": AugmentationPolicy(hflip=True, vflip=True, brightness_add=8),  # grain direction is fixed: no turns
    "zipper": AugmentationPolicy(hflip=True, vflip=True, translate_px=5),  # vertical, mirror-symmetric
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
        tx, ty = rng.uniform(-policy.translate_px, policy.translate_px, size=2) if policy.translate_px else (0.0, 0.0)
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
