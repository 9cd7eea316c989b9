"""Turning a part that lies at any angle upright and cropping to it, before the model sees it.

Why: when the good parts lie at any angle (loose screws, bolts, shafts on a belt), the patch memory compares each
patch with patches that were somewhere else and turned, and the part, free to lie anywhere, cannot be cropped
to a fixed region of interest: it covers a small share of the model's 224 px and small defects vanish. Laying
every part the same way and cropping to it fixes both, for the price of a few milliseconds per frame. It is
used only when the good images do not share one pose (`edge_agent.learn.alignment`) and the part is long: a part
that arrives in one pose, or a round or square one, is left as the camera sees it.

How: the part's edges (squared gradient magnitude of a blurred, 256 px view) are a mass, and the part is their
largest connected blob (Otsu's threshold on the log mass), so dust elsewhere moves nothing. The blob's
centroid and principal axis say where and how the part lies (modulo a half turn), and the sign of the mass's
third moment along the axis picks one end, so the same part turned by half a turn comes out the same way (where
both ends carry the same edge mass that choice is a coin toss, which the augmentation's turns cover). The image
is turned so that the axis lies horizontal, the middle of the part's box moves to the middle of a window that
is `MARGIN` times the longest and the widest part the good images showed, and that window is cut out. Only
parts with an axis are turned (`MIN_ELONGATION`): a round or square part's axis is noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import cv2
import numpy as np

#: The window over the longest and widest good part: room for a part a little larger, or a defect sticking out.
MARGIN = 1.25
#: A part has an axis to turn it by when its edges spread at least this many times farther along it than across.
#: On a round or square part the axis is noise, and turning by it only moves the part: such parts stay as seen.
MIN_ELONGATION = 2.0
#: ``[detector] upright``: "auto" turns long parts at any angle upright (`upright_window` decides at each fit);
#: "off" judges every part as the camera sees it, for a line where that decision should not be the agent's.
UPRIGHT_MODES = ("auto", "off")
#: The detector metadata key that holds the fitted window (`Upright.to_metadata`); absent or null: no turning.
METADATA_KEY = "upright"
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
    elongation: float = 1.0  # the edge mass's spread along the axis over its spread across: 1 for a round part


def part_pose(image: np.ndarray) -> PartPose:
    """The pose of the part in ``image`` (RGB or grayscale), from its edge mass."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    h, w = grey.shape[:2]
    s = _SIDE / max(h, w)
    small = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small.astype(np.float32), (0, 0), 1.5)
    gx, gy = cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1)
    mass = cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), 2.0)
    level = cv2.log(mass + 1.0)
    whole = PartPose(w / 2, h / 2, 0.0, float(w), float(h))  # no part to find: leave the image where it is
    if float(level.max()) <= float(level.min()):  # a flat image
        return whole
    scaled = np.round(255 * (level - level.min()) / (level.max() - level.min())).astype(np.uint8)
    _, edges = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(edges, connectivity=8)
    if count < 2:
        return whole
    part = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))  # the largest blob: dust is not the part
    mo = cv2.moments(np.where(part, mass, 0).astype(np.float32))
    cx, cy = mo["m10"] / mo["m00"], mo["m01"] / mo["m00"]
    angle = 0.5 * math.atan2(2 * mo["mu11"], mo["mu20"] - mo["mu02"])
    spread = math.hypot(mo["mu20"] - mo["mu02"], 2 * mo["mu11"])  # the principal spreads' difference
    elongation = math.sqrt((mo["mu20"] + mo["mu02"] + spread) / max(mo["mu20"] + mo["mu02"] - spread, 1e-12))
    c, s_ = math.cos(angle), math.sin(angle)
    skew = c ** 3 * mo["mu30"] + 3 * c * c * s_ * mo["mu21"] + 3 * c * s_ * s_ * mo["mu12"] + s_ ** 3 * mo["mu03"]
    if skew < 0:  # the third moment of the mass along the axis: which end is the heavy one
        angle, c, s_ = angle + math.pi, -c, -s_
    ys, xs = np.nonzero(part)
    dx, dy = xs - cx, ys - cy
    a, b = dx * c + dy * s_, -dx * s_ + dy * c  # along the axis and across it
    mid_a, mid_b = (a.min() + a.max()) / 2, (b.min() + b.max()) / 2  # the middle of the part's box, not its
    x, y = cx + mid_a * c - mid_b * s_, cy + mid_a * s_ + mid_b * c  # centroid: a screw's head outweighs its tip
    return PartPose(x / s, y / s, angle, float(np.ptp(a)) / s, float(np.ptp(b)) / s, elongation)


class Turned(NamedTuple):
    """One image turned upright: the window the model sees, the map that made it, and the image's shape."""

    image: np.ndarray
    matrix: np.ndarray
    source_shape: tuple[int, ...]

    def to_source(self, window_map: np.ndarray) -> np.ndarray:
        """A map over the window (a heat map, any size) laid back over the image it was cut from; 0 outside."""
        wh, ww = self.image.shape[:2]
        full = cv2.resize(window_map.astype(np.float32), (ww, wh), interpolation=cv2.INTER_LINEAR)
        h, w = self.source_shape[:2]
        return cv2.warpAffine(full, self.matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


@dataclass(frozen=True)
class Upright:
    """The fitted window: its length (along the part) and width (across it) as fractions of the longer side of
    the frames it was fitted on, so that the same part at another resolution fills it the same way."""

    length: float
    width: float

    def size(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(length, width) in pixels of an image of ``shape``."""
        side = max(shape[:2])
        return max(1, round(self.length * side)), max(1, round(self.width * side))

    def apply(self, image: np.ndarray) -> Turned:
        """The part of ``image`` upright in the window. Where the window reaches beyond the image its edge pixels
        are repeated. The model squeezes the window to its square input, the same way for every part, so its
        aspect does not matter."""
        pose = part_pose(image)
        length, width = self.size(image.shape)
        m = cv2.getRotationMatrix2D((pose.x, pose.y), math.degrees(pose.angle), 1.0)
        m[0, 2] += length / 2 - pose.x
        m[1, 2] += width / 2 - pose.y
        out = cv2.warpAffine(image, m, (length, width), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return Turned(out, m, image.shape)

    def to_metadata(self) -> dict[str, Any]:
        return {"length": round(self.length, 6), "width": round(self.width, 6)}

    @classmethod
    def from_metadata(cls, meta: Any) -> Upright | None:
        """The window a detector file records; ``None`` when it has none (parts judged as the camera sees them)."""
        if meta is None:
            return None
        sides = [meta.get(k) for k in ("length", "width")] if isinstance(meta, dict) else []
        if len(sides) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
                                      for v in sides):
            raise ValueError("detector metadata 'upright' must be {'length': x, 'width': y}, fractions of the "
                             f"frame's longer side in (0, 1], got {meta!r}")
        return cls(float(sides[0]), float(sides[1]))


def upright_window(images: Sequence[np.ndarray]) -> Upright | None:
    """The window for these good images: `MARGIN` times the longest and the widest part, each at most the
    frame's longer side. ``None`` when the parts have no long axis to turn them by (their median elongation
    below `MIN_ELONGATION`: round or square parts), which leaves them as the camera sees them."""
    if not images:
        raise ValueError("an upright window needs at least one good image")
    poses = [part_pose(image) for image in images]
    if float(np.median([p.elongation for p in poses])) < MIN_ELONGATION:
        return None
    sides = [max(image.shape[:2]) for image in images]
    length, width = (min(1.0, MARGIN * max(getattr(p, side) / s for p, s in zip(poses, sides)))
                     for side in ("length", "width"))
    return Upright(length, width)


def judged_view(image: np.ndarray, metadata: Mapping[str, Any]) -> tuple[np.ndarray, Turned | None]:
    """What a detector fitted with ``metadata`` sees of ``image`` (the region of interest): the part turned
    upright into its window when the fit chose one, else the image itself; and the turn, to lay a heat map back.
    The one rule for every caller that judges a frame, so that judging sees what fitting saw."""
    upright = Upright.from_metadata(metadata.get(METADATA_KEY))
    if upright is None:
        return image, None
    turned = upright.apply(image)
    return turned.image, turned
