"""Synthetic defects painted on good images: the only "defects" a label-free device can ever show a detector.

The combined detector must decide, on site and without one labelled defect, how much to trust each of its
parts: a pooled Gaussian wins on parts that appear at any rotation, a patch memory wins on small scratches.
Each good image gets a few damaged copies (CutPaste-style: a piece of the same image moved elsewhere and
turned, a scratch, or a stain that darkens or brightens a blob) and the parts are weighted by how far they push
those copies above the good images' own scores. The damage is generic on purpose: sizes are relative to the
image (3-15 % of the short side for blobs, longer for scratches), placed anywhere in the central 80 %, and no
parameter was fitted to a data set.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

KINDS = ("cutpaste", "scratch", "stain")
#: Damaged copies per good image at a fit: 30 extra embeddings at N = 10 (the augmentation costs 100), enough
#: for a stable mean shift per part.
DEFECTS_PER_IMAGE = 3


def _blob_mask(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """A soft-edged random ellipse in the central 80 %, float32 in [0, 1]."""
    h, w = shape
    side = min(h, w)
    axes = (max(2, int(scale * side * rng.uniform(0.5, 1.0))), max(2, int(scale * side * rng.uniform(0.5, 1.0))))
    centre = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    k = max(3, (side // 100) * 2 + 1)
    return cv2.GaussianBlur(mask, (k, k), 0)


def _blend(img: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask if img.ndim == 2 else mask[..., None]
    return np.clip(img * (1 - m) + other * m, 0, 255).astype(np.uint8)


def _cutpaste(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A piece of the same image, turned, pasted elsewhere: local texture that is wrong only in context."""
    h, w = img.shape[:2]
    dx, dy = rng.uniform(-0.5, 0.5, 2) * (w, h)
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(30, 330)), 1.0)
    turn[:, 2] += (dx, dy)
    moved = cv2.warpAffine(img, turn, (w, h), borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
    return _blend(img.astype(np.float32), moved, _blob_mask((h, w), rng, scale))


def _stain(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A blob darker or brighter than its surroundings (dirt, burn, missing coating)."""
    gain = rng.uniform(0.3, 0.6) if rng.random() < 0.5 else rng.uniform(1.5, 2.5)
    base = img.astype(np.float32)
    return _blend(base, base * gain + (0 if gain < 1 else 20), _blob_mask(img.shape[:2], rng, scale))


def _scratch(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A thin curved line, dark or bright: the defect a pooled descriptor averages away."""
    h, w = img.shape[:2]
    side = min(h, w)
    start = rng.uniform(0.1, 0.9, 2) * (w, h)
    angle = rng.uniform(0, 2 * np.pi)
    length = 2.5 * scale * side
    bend = rng.uniform(-0.5, 0.5)
    t = np.linspace(0, 1, 16)[:, None]
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    pts = start + t * length * direction + (t * (1 - t)) * bend * length * normal
    mask = np.zeros((h, w), np.float32)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1.0, max(1, int(side * rng.uniform(0.006, 0.015))))
    mask = cv2.GaussianBlur(mask, (3, 3), 0)
    value = rng.uniform(0, 40) if rng.random() < 0.5 else rng.uniform(215, 255)
    base = img.astype(np.float32)
    return _blend(base, np.full_like(base, value), mask)


_PAINTERS = {"cutpaste": _cutpaste, "scratch": _scratch, "stain": _stain}


def pseudo_defects(images: Sequence[np.ndarray], per_image: int, seed: int = 0) -> list[np.ndarray]:
    """``per_image`` damaged copies of each image, in order (image 0's copies first), kinds taken in turn.

    Deterministic for a seed, so an evaluation can cache their embeddings like the augmented copies.
    """
    if per_image < 1:
        raise ValueError(f"per_image must be at least 1, got {per_image}")
    out = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or min(img.shape[:2]) < 16:
            raise ValueError(f"image {i}: expected a uint8 image of at least 16 x 16 pixels, got {img.dtype} {img.shape}")
        rng = np.random.default_rng([seed, i])
        for j in range(per_image):
            kind = KINDS[(i + j) % len(KINDS)]
            scale = float(np.exp(rng.uniform(np.log(0.03), np.log(0.15))))
            out.append(_PAINTERS[kind](img, rng, scale))
    return out
