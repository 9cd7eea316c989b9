"""The agent's per-frame work (preprocess, invoke, Mahalanobis score) on a given model, e.g. B4 int8, for the
comparison with the paper's stack.

    python -m bench.b4_frame MODEL_DIR --images DIR --train DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import add_image_args, emit, load_images, proc_status, timeit
from edge_agent.augment import PRESETS
from edge_agent.features import FeatureExtractor
from edge_agent.fitting import FitSettings, fit_images


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    add_image_args(p)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    ex = FeatureExtractor(args.model, "cpu", 2)
    images, train = load_images(args)
    t0 = time.perf_counter()
    result = fit_images(ex.embed, train[:10], FitSettings(policy=PRESETS["object"]))
    fit_s = time.perf_counter() - t0
    detector = result.detector
    frames = iter(images * 100)

    def per_frame():
        f = ex.embed_one(next(frames))
        return float(detector.score_samples({k: v[None] for k, v in f.items()})[0])

    emit({"kind": "b4_frame", "model": ex.manifest.name, "fit_s": round(fit_s, 2), "frame": timeit(per_frame, args.repeat),
          "peak_rss_mb": round(proc_status("VmHWM") / 1024, 1)})


if __name__ == "__main__":
    main()
