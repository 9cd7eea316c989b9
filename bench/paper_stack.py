"""The reference: the paper's stack as a notebook would run it. Keras EfficientNet-B4 float32 features (pooled
blocks 4, 6, 7 at 380x380) + scikit-learn LedoitWolf + Mahalanobis, per frame and for the N=10 x11 fit.

    python -m bench.paper_stack --images DIR --train DIR
"""

from __future__ import annotations

from bench.common import add_image_args, emit, load_images, proc_status, timeit  # first: thread limits before numpy

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from edge_agent.learn.augment import PRESETS, augment  # noqa: E402
from edge_agent.capture.preprocess import resize_rgb  # noqa: E402


def main() -> None:
    import tensorflow as tf
    from sklearn.covariance import LedoitWolf

    from converter.backbones import get_backbone
    from converter.feature_model import build_backbone, build_feature_model

    p = argparse.ArgumentParser()
    add_image_args(p)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    spec = get_backbone("efficientnet-b4")
    model = build_feature_model(build_backbone(spec, 380, None), spec.pooled_taps, ())  # random weights: same compute
    images, train = load_images(args)

    def embed(image):
        x = resize_rgb(image, (380, 380)).astype(np.float32)[None]
        out = model([x], training=False)
        return {k: np.asarray(v)[0] for k, v in out.items()}

    t0 = time.perf_counter()
    feats = [embed(im) for im in augment(train[:10], PRESETS["object"], 10, 0)]
    models = {}
    for level in feats[0]:
        X = np.stack([f[level] for f in feats])
        models[level] = LedoitWolf().fit(X)
    fit_s = time.perf_counter() - t0

    frame = iter(images * 100)

    def per_frame():
        f = embed(next(frame))
        return sum(float(np.sqrt(m.mahalanobis(f[level][None])[0])) for level, m in models.items())

    t = timeit(per_frame, args.repeat)
    emit({"kind": "paper_stack", "backbone": "efficientnet-b4", "precision": "keras-float32", "fit_s": round(fit_s, 2),
          "frame": t, "peak_rss_mb": round(proc_status("VmHWM") / 1024, 1)})


if __name__ == "__main__":
    main()
