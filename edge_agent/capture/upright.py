"""Turning a part that lies at any angle upright and cropping to it, before the model sees it.

Why: when the good parts lie at any angle (loose screws, cast parts on a belt), the patch memory compares each
patch with patches that were somewhere else and turned, and the part, free to lie anywhere, cannot be cropped
to a fixed region of interest: it covers a small share of the model's 224 px and small defects vanish. Laying
every part the same way and cropping to it fixes both, for the price of a few milliseconds per frame. It is
used only when the good images do not share one pose (`edge_agent.learn.alignment`): a part that arrives in one
pose is left as the camera sees it.

How, with no constant fitted to any data set: the part's edges (squared gradient magnitude of a blurred,
256 px view) are a mass. Its centroid is where the part lies, its principal axis how it lies (modulo a half
turn), and the sign of its third moment along that axis picks one end, so the same part turned by half a turn
comes out the same way; where both ends carry the same edge mass that choice is a coin toss, which the
augmentation's turns cover. The image is turned about the centroid so that the axis lies horizontal, the
middle of the part's box moves to the middle of a window that is `MARGIN` times the longest and the widest part
the good images showed. The part is the largest connected blob of strong edges (Otsu's threshold on the log
edge mass), so dust elsewhere in the frame moves neither the window nor the angle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: The window over the longest and widest good part: room for a part a little larger, or a defect sticking out.
MARGIN = 1.25
_SIDE = 256  # the part's position and axis, not its texture: a coarse, fixed-size view


@dataclass(frozen=True)
class PartPose:
    """Where a part lies in its image (pixels): the middle of its box, the angle of its axis (radians), its
    length along the axis and its width across it."""

    x: float
    y: float
    angle: float
    length: float
    width: float


def part_pose(image: np.ndarray) -> PartPose:
    """The pose of the part in ``image`` (RGB or grayscale), from its edge mass."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    h, w = grey.shape[:2]
    s = _SIDE / max(h, w)
    small = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.5)
    gx, gy = cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1)
    mass = cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), 2.0)
    level = np.log1p(mass)
    if float(level.max()) <= float(level.min()):  # a flat image has no part to find: leave it where it is
        return PartPose(w / 2, h / 2, 0.0, float(w), float(h))
    scaled = np.round(255 * (level - level.min()) / (level.max() - level.min())).astype(np.uint8)
    _, edges = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(edges, connectivity=8)
    if count < 2:
        return PartPose(w / 2, h / 2, 0.0, float(w), float(h))
    part = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # the largest blob: dust is not the part
    weight = mass.astype(np.float64) * part
    total = weight.sum()
    ys, xs = np.mgrid[0:mass.shape[0], 0:mass.shape[1]]
    cx, cy = (weight * xs).sum() / total, (weight * ys).sum() / total
    dx, dy = xs - cx, ys - cy
    cxx, cyy, cxy = ((weight * dx * dx).sum() / total, (weight * dy * dy).sum() / total,
                     (weight * dx * dy).sum() / total)
    angle = 0.5 * math.atan2(2 * cxy, cxx - cyy)
    along = dx * math.cos(angle) + dy * math.sin(angle)
    if (weight * along ** 3).sum() < 0:
        angle, along = angle + math.pi, -along
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    a, b = along[part], across[part]
    mid_a, mid_b = (a.min() + a.max()) / 2, (b.min() + b.max()) / 2  # the middle of the part's box, not its
    x = cx + mid_a * math.cos(angle) - mid_b * math.sin(angle)   # centroid: a screw's head outweighs its tip
    y = cy + mid_a * math.sin(angle) + mid_b * math.cos(angle)
    return PartPose(x / s, y / s, angle, float(np.ptp(a)) / s, float(np.ptp(b)) / s)


@dataclass(frozen=True)
class Upright:
    """The fitted window, in pixels of the frames it was fitted on: along the part's axis and across it."""

    length: int
    width: int

    @classmethod
    def fit(cls, images: Sequence[np.ndarray]) -> Upright:
        """The window for these good images: `MARGIN` times the longest and the widest part, each at most the
        frame's longer side."""
        if not images:
            raise ValueError("an upright window needs at least one good image")
        poses = [part_pose(image) for image in images]
        bound = max(max(image.shape[:2]) for image in images)
        length, width = (max(1, min(bound, round(MARGIN * max(getattr(p, side) for p in poses))))
                         for side in ("length", "width"))
        return cls(length, width)

    def transform(self, image: np.ndarray) -> np.ndarray:
        """The 2 x 3 affine map from ``image``'s pixels to the window's."""
        pose = part_pose(image)
        m = cv2.getRotationMatrix2D((pose.x, pose.y), math.degrees(pose.angle), 1.0)
        m[0, 2] += self.length / 2 - pose.x
        m[1, 2] += self.width / 2 - pose.y
        return m

    def apply(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the part upright in a ``length`` x ``width`` window, the affine map used). Where the window reaches
        beyond the frame the frame's edge pixels are repeated. The model squeezes the window to its square input,
        the same way for every part, so its aspect does not matter."""
        m = self.transform(image)
        out = cv2.warpAffine(image, m, (self.length, self.width), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        return out, m

    def to_frame(self, window_map: np.ndarray, m: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        """A map over the window (a heat map, any size) laid back over the frame it was cut from; 0 outside."""
        full = cv2.resize(window_map.astype(np.float32), (self.length, self.width), interpolation=cv2.INTER_LINEAR)
        h, w = frame_shape[:2]
        return cv2.warpAffine(full, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)

    def to_metadata(self) -> dict[str, Any]:
        return {"length": self.length, "width": self.width}

    @classmethod
    def from_metadata(cls, meta: Any) -> Upright | None:
        """The window a detector file records; ``None`` when it has none (parts judged as the camera sees them)."""
        if meta is None:
            return None
        sides = [meta.get(k) for k in ("length", "width")] if isinstance(meta, dict) else []
        if len(sides) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides):
            raise ValueError("detector metadata 'upright' must be {'length': n, 'width': n} with positive whole "
                             f"numbers, got {meta!r}")
        return cls(*sides)
