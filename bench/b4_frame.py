"""The agent's per-frame work (preprocess, invoke, Mahalanobis score) on a given model, e.g. B4 int8, for the
comparison with the paper's stack.

    python -m bench.b4_frame MODEL_DIR --images DIR --train DIR
"""

from __future__ import annotations

import time

from bench.common import emit, model_bench, proc_status, timeit
from edge_agent.learn.augment import PRESETS
from edge_agent.learn.fitting import FitSettings, fit_images


def main() -> None:
    args, ex, images, train = model_bench(repeat=30)
    t0 = time.perf_counter()
    result = fit_images(ex.embed, train[:10], FitSettings(detector="mahalanobis", policy=PRESETS["object"]))
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
