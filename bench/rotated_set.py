"""A copy of a data set (MVTec layout) with every image turned by its own random angle.

The patch-level issue reports one real set whose parts arrive at any rotation, where the pooled Gaussian beat
the patch memory; none of the shared sets is like that. Turning every training and test image of a set by an
angle drawn from its file name makes one, so that the combined detector's weighting can be checked on a set where
the patch memory is hampered, not only on sets where it already wins. Evaluate it with an augmentation preset that
turns the parts too (``--preset hazelnut``: any orientation).

    python -m bench.rotated_set build/data/elpv_mono build/data/elpv_mono_rotated
"""

from __future__ import annotations

from edge_agent.system.threads import limit_threads

limit_threads()  # an entry point: before cv2 and numpy load, as edge-agent does

import argparse  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from edge_agent.capture.images import IMAGE_SUFFIXES  # noqa: E402


def rotate_set(src: Path, dst: Path) -> int:
    """Write the turned copy; the angle is a function of the file name, so reruns give the same set."""
    paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images under {src}")
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SystemExit(f"cannot read {path}")
        h, w = img.shape[:2]
        # From the name, a mask's suffix dropped so that ground_truth/x/000_mask.png turns with test/x/000.png.
        # elpv names are unique; in MVTec sets train/good/000.png and test/good/000.png share an angle.
        angle = (zlib.crc32(path.name.replace("_mask.", ".").encode()) % 3600) / 10
        turned = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h),
                                borderMode=cv2.BORDER_REFLECT_101)  # the augmentation's border, so corners match
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), turned):
            raise SystemExit(f"cannot write {out}")
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="data set in MVTec layout")
    parser.add_argument("dst", type=Path, help="where the turned copy goes")
    args = parser.parse_args(argv)
    print(f"{rotate_set(args.src, args.dst)} images turned into {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
