"""Run by scripts/arm64_device_check.sh inside the emulated Raspberry Pi OS root, with the agent's venv python.

Proves the installed agent works with apt's camera stack: numpy is Debian's (not a pip copy shadowing it), a
Debian C extension built against that numpy imports and computes (the "numpy.dtype size changed" failure
picamera2's simplejpeg shows under a pip numpy 2), and the agent embeds real images and fits and scores a
detector with edge_agent's own fitting code. Exit status 0 only when all of that holds; the lines starting with
an upper-case tag are what the calling script and docs/arm64.md quote.

Usage: python arm64_fit_check.py --expect-numpy VERSION --expect-numpy-dir DIR --debian-ext MODULE
           --good DIR --score IMAGE [IMAGE ...] [--factor 2] [--model-dir DIR] [--features-out FILE.npz]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

T0 = time.perf_counter()


def line(tag: str, text: str) -> None:
    print(f"{tag:11s} {text}", flush=True)


def fail(text: str) -> None:
    line("FAIL", text)
    sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect-numpy", required=True, help="the version apt installed (python3-numpy)")
    ap.add_argument("--expect-numpy-dir", required=True, help="where apt put it")
    ap.add_argument("--debian-ext", default="scipy", help="a Debian C extension built against that numpy")
    ap.add_argument("--good", required=True, help="folder of good images to fit on")
    ap.add_argument("--score", nargs="+", required=True, help="images to score after the fit")
    ap.add_argument("--factor", type=int, default=2, help="augmented copies per good image")
    ap.add_argument("--model-dir", help="model folder [the installed package's default model]")
    ap.add_argument("--features-out", help="save the first --score image's features here (for the x86 comparison)")
    ap.add_argument("--embed-only", action="store_true", help="only embed the first --score image (x86 reference)")
    args = ap.parse_args()

    import numpy as np

    numpy_dir = os.path.dirname(np.__file__)
    line("NUMPY", f"{np.__version__} from {numpy_dir}")
    if not args.embed_only:
        if os.path.realpath(numpy_dir) != os.path.realpath(args.expect_numpy_dir) \
                or np.__version__ != args.expect_numpy:
            fail(f"numpy is {np.__version__} from {numpy_dir}, not apt's {args.expect_numpy} from "
                 f"{args.expect_numpy_dir}: pip put its own numpy in the venv (install.sh's constraint regressed?)")
        check_debian_extension(args.debian_ext)

    import cv2
    from importlib import metadata

    from edge_agent.capture.images import read_folder, read_image
    from edge_agent.embed.features import FeatureExtractor
    from edge_agent.embed.runtime.interpreter import interpreter_module

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    line("CV2", f"{cv2.__version__} from {os.path.dirname(cv2.__file__)}")
    mod = interpreter_module()
    line("RUNTIME", f"{mod.__name__} (ai-edge-litert {version('ai-edge-litert')}, "
                    f"tflite-runtime {version('tflite-runtime')}); edge-inspect {version('edge-inspect')}")

    if args.model_dir:
        model_dir = args.model_dir
    else:
        from edge_agent.models import default_model_dir

        model_dir = default_model_dir()
    t = time.perf_counter()
    fx = FeatureExtractor(model_dir, delegate="cpu", threads=2)
    line("MODEL", f"{model_dir} ({fx.manifest.model_id}) loaded in {time.perf_counter() - t:.1f} s")
    first = read_image(args.score[0])
    t = time.perf_counter()
    feats = fx.embed_one(first)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(feats.items()))
    line("EMBED", f"{os.path.basename(args.score[0])} {first.shape} -> {shapes} in {time.perf_counter() - t:.2f} s")
    if args.features_out:
        np.savez(args.features_out, **{k.replace("/", "__"): np.asarray(v) for k, v in feats.items()})
    if args.embed_only:
        return

    from edge_agent.learn.fitting import FitSettings, fit_images
    from edge_agent.learn.threshold import is_anomalous

    names, images = read_folder(args.good, min_images=2)
    settings = FitSettings(factor=args.factor)
    t = time.perf_counter()
    result = fit_images(lambda ims: fx.embed(ims), images, settings)
    line("FIT", f"{settings.detector} on {result.n_train} good images (+{args.factor} augmented copies each; "
                f"{result.distinct_parts} distinct parts): threshold {result.threshold:.4f} in "
                f"{time.perf_counter() - t:.1f} s (timings {result.timings})")
    if not np.isfinite(result.threshold):
        fail(f"threshold {result.threshold} is not finite")
    for path in args.score:
        scores = result.detector.score_samples(fx.embed([read_image(path)]))
        verdict = "anomalous" if bool(is_anomalous(scores, result.threshold)[0]) else "good"
        if not np.all(np.isfinite(scores)):
            fail(f"score {scores} of {path} is not finite")
        rel = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
        line("SCORE", f"{rel}: {float(scores[0]):.4f} -> {verdict}")
    line("OK", f"numpy {np.__version__} (apt), {args.debian_ext} (apt), opencv {cv2.__version__}, "
               f"{mod.__name__}: embedded, fitted and scored in {time.perf_counter() - T0:.1f} s")


def check_debian_extension(name: str) -> None:
    """Import apt's compiled extension and make it compute with this numpy (a stand-in for picamera2's simplejpeg)."""
    import numpy as np

    try:
        mod = importlib.import_module(name)
        if name == "scipy":
            from scipy import linalg, ndimage  # both compiled against numpy's C API
            x = np.arange(64, dtype=np.float64).reshape(8, 8)
            probe = f"ndimage.gaussian_filter sum {ndimage.gaussian_filter(x, 1.0).sum():.1f}, " \
                    f"linalg.det {linalg.det(np.eye(3) * 2):.1f}"
        elif name == "cv2":
            probe = f"cv2.resize {mod.resize(np.zeros((8, 8), np.uint8), (4, 4)).shape}"
        else:
            probe = "imported"
    except Exception as exc:  # noqa: BLE001 - the error text is the finding
        fail(f"apt's {name} does not work with numpy {np.__version__}: {type(exc).__name__}: {exc}")
    line("DEBIAN_EXT", f"{name} {getattr(mod, '__version__', '?')} from {os.path.dirname(mod.__file__)}: {probe}")


if __name__ == "__main__":
    main()
