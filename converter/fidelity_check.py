"""Measure a converted model's fidelity on your own images: device features vs the float Keras model.

Why separate from conversion: the converter reports fidelity on held-out calibration images, but what
matters is the parts on your line. This rebuilds the float model the manifest describes (backbone,
weights, taps) and compares it, level by level, with what the device's FeatureExtractor gives.

    python -m converter.fidelity_check --model models/efficientnet-lite0-int8 --images DIR [DIR ...]
"""

from __future__ import annotations

from edge_agent.system.threads import limit_threads

limit_threads()  # an entry point: before the imports below load numpy, as edge-agent does

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from converter.backbones import get_backbone  # noqa: E402
from converter.feature_model import build_backbone, build_feature_model, output_levels, resolve_weights  # noqa: E402
from converter.fidelity import fidelity_report, keras_features  # noqa: E402
from edge_agent.capture.images import ImageFolderError, list_images, read_image  # noqa: E402
from edge_agent.capture.preprocess import resize_rgb  # noqa: E402
from edge_agent.embed.features import FeatureExtractor  # noqa: E402


def _taps(levels: list[str], kind: str) -> tuple[int, ...]:
    return tuple(int(lv.split("stage")[1]) for lv in levels if lv.startswith(kind + "/"))


def _image_paths(sources: list[Path], limit: int | None) -> list[Path]:
    """The images named, and those of the folders named, in the order given; the first ``limit`` of them."""
    paths: list[Path] = []
    for source in sources:
        found = [source] if source.is_file() else list_images(source)
        if not found:
            raise ImageFolderError(f"no images in {source}")
        paths += found
    return paths[:limit] if limit else paths


def check(model_dir: Path, sources: list[Path], limit: int | None = None) -> dict:
    """Fidelity of the model in ``model_dir`` on images (files, or folders of them), as ``fidelity_report``."""
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
    paths = _image_paths(sources, limit)
    names = [f"{p.parent.name}/{p.name}" for p in paths]
    images = [resize_rgb(read_image(p), (m.input.height, m.input.width)) for p in paths]
    logging.info("comparing %d images", len(images))
    candidate = extractor.embed(images, progress="device model")
    reference = keras_features(model, images, level_of)
    report = fidelity_report(reference, candidate, names)
    report["model_id"] = m.model_id
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, nargs="+", required=True, help="image folders or files")
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
