"""Unaligned parts (screw): two label-free ways to take the pose out before the Gaussian and the patch memory.

* ``canonical``: every image (training and test) is turned so that its dominant gradient orientation (the
  structure tensor's, on the whole frame) is horizontal, then augmented as usual; a part at any angle becomes a
  part at one of two angles (0 or 180 degrees, which the Table 4 screw row's 90-degree turns cover).
* ``tta``: the test image is scored at 8 turns (every 45 degrees) and keeps its lowest score (the pose the good
  images explain best); 8 model runs per part.

    python -m bench.screw_pose FOLDER [--preset screw]   (N=10, x10, 5 replicates; prints AUROC per replicate)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from edge_agent.capture.images import read_image
from edge_agent.embed.features import FeatureExtractor
from edge_agent.learn.augment import PRESETS, augment
from edge_agent.learn.detectors import make_detector
from edge_agent.offline.datasets import load_mvtec
from edge_agent.offline.evaluate import _draw
from edge_agent.offline.metrics import roc_auc

N, FACTOR, REPLICATES = 10, 10, 5


def orientation_deg(img: np.ndarray) -> float:
    g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    g = cv2.resize(g, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    return float(np.degrees(0.5 * np.arctan2(2 * (gx * gy).sum(), (gx * gx).sum() - (gy * gy).sum())))


def turn(img: np.ndarray, deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def canonical(img: np.ndarray) -> np.ndarray:
    return turn(img, orientation_deg(img))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--preset", default="screw")
    ap.add_argument("--model", type=Path, default=Path("models/efficientnet-lite0-int8"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ds = load_mvtec(args.folder)
    ex = FeatureExtractor(args.model)
    policy = PRESETS[args.preset]
    test_imgs = [read_image(p) for p in ds.test]
    test_can = ex.embed([canonical(i) for i in test_imgs])
    test_rot = [ex.embed([turn(i, a) for i in test_imgs]) for a in range(0, 360, 45)]
    res = {k: [] for k in ("canonical", "tta")}
    for rep in range(REPLICATES):
        idx = _draw(0, N, rep, len(ds.train))
        train = [read_image(ds.train[i]) for i in idx]
        f_can = ex.embed(augment([canonical(i) for i in train], policy, FACTOR, rep))
        f_plain = ex.embed(augment(train, policy, FACTOR, rep))
        row = {}
        for part in ("mahalanobis", "patch-knn"):
            d = make_detector(part).fit(f_can)
            row[f"canonical {part}"] = roc_auc(ds.test_labels, d.score_samples(test_can))
            d = make_detector(part).fit(f_plain)
            s = np.min([d.score_samples(t) for t in test_rot], axis=0)
            row[f"tta {part}"] = roc_auc(ds.test_labels, s)
        print(rep, {k: round(v, 3) for k, v in row.items()}, flush=True)
        for k, v in row.items():
            res.setdefault(k, []).append(v)
    for k, v in res.items():
        if v:
            print(f"{k}: {np.mean(v):.3f} ± {np.std(v):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
