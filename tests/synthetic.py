"""Synthetic inputs shared by tests: feature maps where locations genuinely differ, and a real part laid at
any angle on a plain belt."""

import cv2
import numpy as np


def spatial(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Stage-3-like 16x16x8 and stage-4-like 8x8x16 maps with a smooth per-location pattern plus noise."""
    yy, xx = np.mgrid[0:16, 0:16]
    pattern = np.sin(xx / 3.0)[..., None] + np.cos(yy / 4.0)[..., None]
    s3 = pattern[None] + 0.3 * rng.normal(size=(n, 16, 16, 8))
    s4 = 0.3 * rng.normal(size=(n, 8, 8, 16))
    return {"spatial/stage3": s3.astype(np.float32), "spatial/stage4": s4.astype(np.float32)}


def part_from(real: np.ndarray) -> np.ndarray:
    """A T-shaped part cut from a real image (a 200 x 44 px shank and a 44 x 110 px head at its right end): long,
    with one heavy end, like a screw. Grey, the part's pixels darkened to stand out from a light belt."""
    grey = cv2.cvtColor(real, cv2.COLOR_RGB2GRAY) if real.ndim == 3 else real
    grey = cv2.resize(grey, (256, 256), interpolation=cv2.INTER_AREA)
    part = np.zeros((110, 244), np.uint8)
    part[33:77, :200] = grey[100:144, 20:220] // 2 + 20
    part[:, 200:] = grey[60:170, 200:244] // 2 + 20
    return part


def lying(part: np.ndarray, degrees: float, centre: tuple[int, int], side: int = 400,
          belt: int = 210) -> np.ndarray:
    """``part`` (0 = not part) turned by ``degrees`` about its middle and laid with its middle at ``centre`` on a
    plain ``side`` x ``side`` belt, as RGB."""
    h, w = part.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    m[:, 2] += np.array(centre) - (w / 2, h / 2)
    laid = cv2.warpAffine(part, m, (side, side), flags=cv2.INTER_NEAREST, borderValue=0)
    image = np.where(laid > 0, laid, belt).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
