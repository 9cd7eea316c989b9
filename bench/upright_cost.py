"""What turning a part upright costs per frame, beside the embedding of the same frame.

Parts at any angle are turned upright and cropped to before the model sees them (`edge_agent.learn.upright`):
finding the part's pose and cutting the window, on every frame. This times that and the embedding of the same
frames in one run (the machine is shared: compare the two, not figures across runs), and the window's fit on
the N good images.

    python -m bench.upright_cost [--images DIR] [--repeat 30]
"""

from __future__ import annotations

from bench.common import N_TRAIN, emit, timeit  # first: the thread limits, before numpy loads

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from edge_agent.capture.images import list_images, read_image  # noqa: E402
from edge_agent.learn.upright import upright_window  # noqa: E402
from edge_agent.embed.features import FeatureExtractor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, nargs="?", default=ROOT / "models" / "efficientnet-lite0-int8")
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "mvtec_screw" / "train" / "good",
                   help="good frames of a part lying at any angle")
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args(argv)
    frames = [read_image(path) for path in list_images(args.images)[:N_TRAIN]]
    ex = FeatureExtractor(args.model, "cpu", 2)
    fit = timeit(lambda: upright_window(frames), max(3, args.repeat // 10), warmup=1)
    window = upright_window(frames)
    if window is None:
        raise SystemExit(f"the frames in {args.images} show no long part at any angle: nothing is turned upright")
    turned = [window.apply(f).image for f in frames]
    cycle = iter(range(10 ** 9))
    upright = timeit(lambda: window.apply(frames[next(cycle) % len(frames)]), args.repeat)
    embed = timeit(lambda: ex.embed_one(turned[next(cycle) % len(turned)]), args.repeat)
    emit({"kind": "upright_cost", "frame": list(frames[0].shape[:2]), "window": list(turned[0].shape[1::-1]),
          "fit_window_ms": fit["median_ms"], "upright_ms": upright["median_ms"], "embed_ms": embed["median_ms"],
          "upright_over_embed": round(upright["median_ms"] / embed["median_ms"], 2)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
