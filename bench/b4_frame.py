"""The agent's per-frame work (preprocess, invoke, Mahalanobis score) on a given model, e.g. B4 int8, for the
comparison with the paper's stack.

    python -m bench.b4_frame MODEL_DIR --images DIR --train DIR
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import emit, proc_status, timeit
from edge_agent.augment import PRESETS
from edge_agent.features import FeatureExtractor
from edge_agent.fitting import FitSettings, fit_images
from edge_agent.images import list_images, read_folder, read_image


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", type=Path)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    ex = FeatureExtractor(args.model, "cpu", 2)
    _, images = read_folder(args.images)
    train = [read_image(p) for p in list_images(args.train)[:10]]  # only what is fitted: RSS is the agent's
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
