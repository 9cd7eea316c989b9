"""Measure a converted model's fidelity on your own images: device features vs the float Keras model.

Why separate from conversion: the converter reports fidelity on held-out calibration images, but what
matters is the parts on your line. This rebuilds the float model the manifest describes (backbone,
weights, taps) and compares it, level by level, with what the device's FeatureExtractor gives.

    python -m converter.fidelity_check --model models/efficientnet-lite0-int8 --images DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from converter.backbones import get_backbone
from converter.feature_model import build_backbone, build_feature_model, output_levels, resolve_weights
from converter.fidelity import fidelity_report, keras_features
from edge_agent.embed.features import FeatureExtractor
from edge_agent.capture.images import read_folder
from edge_agent.capture.preprocess import resize_rgb


def _taps(levels: list[str], kind: str) -> tuple[int, ...]:
    return tuple(int(lv.split("stage")[1]) for lv in levels if lv.startswith(kind + "/"))


def check(model_dir: Path, folders: list[Path], limit: int | None = None) -> dict:
    extractor = FeatureExtractor(model_dir)
    m = extractor.manifest
    if m.weights.get("source") not in ("imagenet", "file"):
        raise ValueError(f"{model_dir} was built with {m.weights.get('source')} weights: nothing to compare with")
    spec = get_backbone(m.backbone)
    weights = resolve_weights(spec, "imagenet", None) if m.weights["source"] == "imagenet" else None
    if weights is None:
        raise ValueError("fidelity_check rebuilds only models made from the imagenet weights")
    pooled, spatial = _taps(list(m.levels), "pooled"), _taps(list(m.levels), "spatial")
    model = build_feature_model(build_backbone(spec, m.input.height, weights), pooled, spatial)
    level_of = output_levels(pooled, spatial)
    names, images = [], []
    for folder in folders:
        paths, imgs = read_folder(folder)
        names += [f"{folder.name}/{p.name}" for p in paths]
        images += [resize_rgb(im, (m.input.height, m.input.width)) for im in imgs]
    if limit:
        names, images = names[:limit], images[:limit]
    logging.info("comparing %d images", len(images))
    candidate = extractor.embed(images, progress="device model")
    reference = keras_features(model, images, level_of)
    report = fidelity_report(reference, candidate, names)
    report["model_id"] = m.model_id
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, nargs="+", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--min-cosine", type=float, default=0.95, help="exit 1 if any level's mean is below this")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        report = check(args.model, args.images, args.limit)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"fidelity_check: error: {exc}", file=sys.stderr)
        return 2
    worst = min(v["mean_cosine"] for v in report["levels"].values())
    print(f"{report['model_id']}: {report['n_images']} images")
    print("| level | mean cosine | min cosine |\n|---|---|---|")
    for level, v in report["levels"].items():
        print(f"| {level} | {v['mean_cosine']:.4f} | {v['min_cosine']:.4f} |")
    print(json.dumps({k: v for k, v in report.items() if k != "images"}))
    return 0 if worst >= args.min_cosine else 1


if __name__ == "__main__":
    sys.exit(main())
