"""Synthetic feature maps shared by the detector tests: where locations genuinely differ."""

import numpy as np


def spatial(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Stage-3-like 16x16x8 and stage-4-like 8x8x16 maps with a smooth per-location pattern plus noise."""
    yy, xx = np.mgrid[0:16, 0:16]
    pattern = np.sin(xx / 3.0)[..., None] + np.cos(yy / 4.0)[..., None]
    s3 = pattern[None] + 0.3 * rng.normal(size=(n, 16, 16, 8))
    s4 = 0.3 * rng.normal(size=(n, 8, 8, 16))
    return {"spatial/stage3": s3.astype(np.float32), "spatial/stage4": s4.astype(np.float32)}
