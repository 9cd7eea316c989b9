"""What the patch-memory detector costs on the camera: scoring (search + heat map at input resolution) against
one embedding with the same model, and the fitted memory, for the coreset and the exact full bank.

    python -m bench.patch_cost MODEL_DIR --train DIR --images DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import add_image_args, emit, load_images, timeit
from edge_agent.augment import PRESETS, augment
from edge_agent.detectors import make_detector, upsample_heatmap
from edge_agent.features import FeatureExtractor


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    add_image_args(p)
    p.add_argument("--repeat", type=int, default=100)
    args = p.parse_args()
    ex = FeatureExtractor(args.model, "cpu", 2)
    images, train = load_images(args)
    feats = ex.embed(augment(train[:10], PRESETS["object"], 10, 0))
    frames = [ex.embed_one(im) for im in images[:20]]
    size = (ex.manifest.input.height, ex.manifest.input.width)
    cycle = iter(images * 1000)
    embed = timeit(lambda: ex.embed_one(next(cycle)), args.repeat)
    for ratio in (0.1, 1.0):
        det = make_detector("patch-knn", coreset_ratio=ratio).fit(feats)
        batches = iter([{k: v[None] for k, v in f.items()} for f in frames] * 1000)

        def score():
            scores, maps = det.score_and_heatmaps(next(batches))
            return scores, upsample_heatmap(maps[0], size)

        t = timeit(score, args.repeat)
        emit({"kind": "patch_cost", "model": ex.manifest.name, "coreset_ratio": ratio,
              "bank_patches": int(det.memory_bank_.shape[0]), "nbytes_mb": round(det.nbytes_ / 1e6, 2),
              "score_ms": t, "embed_ms": embed, "score_over_embed": round(t["median_ms"] / embed["median_ms"], 3)})


if __name__ == "__main__":
    main()
