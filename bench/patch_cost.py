"""What the patch-memory detector costs on the camera: scoring (search + heat map at input resolution) against
one embedding with the same model, and the fitted memory, for the coreset and the exact full bank; and the same
for the combined detector (the default: Mahalanobis + the coreset patch memory, fitted as the camera fits it).

    python -m bench.patch_cost MODEL_DIR --train DIR --images DIR
"""

from __future__ import annotations

from bench.common import emit, model_bench, timeit  # first: the thread limits, before numpy loads

import cv2  # noqa: E402

from edge_agent.learn.augment import PRESETS, augment  # noqa: E402
from edge_agent.learn.detectors import make_detector  # noqa: E402
from edge_agent.learn.fitting import FitSettings, fit_features, split_defects  # noqa: E402
from edge_agent.learn.pseudo_defects import DEFECTS_PER_IMAGE, pseudo_defects  # noqa: E402


def main() -> None:
    args, ex, images, train = model_bench(repeat=100)
    feats = ex.embed(augment(train[:10], PRESETS["object"], 10, 0))
    frames = [ex.embed_one(im) for im in images[:20]]
    size = (ex.manifest.input.width, ex.manifest.input.height)  # OpenCV's (width, height)
    cycle = iter(images * 1000)
    embed = timeit(lambda: ex.embed_one(next(cycle)), args.repeat)
    detectors = [(f"patch-knn coreset_ratio={r}", make_detector("patch-knn", coreset_ratio=r).fit(feats)) for r in (0.1, 1.0)]
    damaged = split_defects(ex.embed(pseudo_defects(train[:10], DEFECTS_PER_IMAGE, 0)), 10)
    detectors.append(("combined", fit_features(feats, 10, FitSettings(detector="combined"), damaged).detector))
    for name, det in detectors:
        batches = iter([{k: v[None] for k, v in f.items()} for f in frames] * 1000)

        def score(det=det, batches=batches):
            scores, maps = det.score_and_heatmaps(next(batches))
            return scores, cv2.resize(maps[0], size, interpolation=cv2.INTER_LINEAR)

        t = timeit(score, args.repeat)
        patch = next(p for p in getattr(det, "parts_", [det]) if hasattr(p, "memory_bank_"))
        emit({"kind": "patch_cost", "model": ex.manifest.name, "detector": name,
              "bank_patches": int(patch.memory_bank_.shape[0]), "nbytes_mb": round(patch.nbytes_ / 1e6, 2),
              "score_ms": t, "embed_ms": embed, "score_over_embed": round(t["median_ms"] / embed["median_ms"], 3)})


if __name__ == "__main__":
    main()
