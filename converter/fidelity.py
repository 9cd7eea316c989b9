"""How far the converted model's features are from the float Keras model's, per level.

Why cosine similarity: detectors compare features by direction and distance; a per-level cosine close to
1 on images the quantiser never saw says int8 kept the geometry the detector relies on. Spatial maps are
compared flattened, so the figure covers every location at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_agent.embed.manifest import Features


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (flattened per sample)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)


def fidelity_report(reference: Features, candidate: Features, image_names: Sequence[str]) -> dict:
    """``{"n_images", "images", "levels": {level: {"mean_cosine", "min_cosine"}}}``."""
    levels = {}
    for level, ref in reference.items():
        cos = cosine_rows(ref, candidate[level])
        levels[level] = {"mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5)}
    return {"n_images": len(image_names), "images": list(image_names), "levels": levels}


def keras_features(feature_model, images: Sequence[np.ndarray], level_of: dict[str, str]) -> Features:
    """Float reference features from the Keras model, keyed by level like the device's extractor."""
    rows = [feature_model([im.astype(np.float32)[None]], training=False) for im in images]
    return {level_of[name]: np.concatenate([np.asarray(r[name]) for r in rows]) for name in rows[0]}
