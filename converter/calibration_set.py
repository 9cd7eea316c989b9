"""Write the calibration folder of the shipped models from images anyone may redistribute or re-install.

Why these: the shipped model serves parts nobody has seen yet, so its int8 ranges must cover colour
photographs as well as grayscale industrial images. scikit-image's bundled sample photos (colour and
grayscale, with crops of the colour ones for more views) and electroluminescence images of solar cells from
the ``elpv-dataset`` PyPI package (CC BY-NC-SA 4.0) give both, offline and reproducibly.

    python -m converter.calibration_set OUT_DIR
"""

from __future__ import annotations

from edge_agent.system.threads import limit_threads

limit_threads()  # an entry point (python -m converter.calibration_set): before cv2 and numpy load

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from edge_agent.offline.datasets import elpv_labels  # noqa: E402

COLOUR = ("astronaut", "chelsea", "coffee", "colorwheel", "hubble_deep_field", "immunohistochemistry",
          "retina", "rocket", "logo")
GRAY = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text")
ELPV_PER_GROUP = 12  # per (cell type, defect probability 0 or >0): 48 cells in all


def _skimage_images() -> dict[str, np.ndarray]:
    import skimage.data

    out = {}
    for name in COLOUR + GRAY:
        image = getattr(skimage.data, name)()
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        out[name] = image
        if name in COLOUR:  # left and right halves: more colour views of different scale
            w = image.shape[1]
            out[f"{name}_left"], out[f"{name}_right"] = image[:, : w // 2], image[:, w // 2 :]
    return out


def _elpv_images() -> dict[str, np.ndarray]:
    rows = elpv_labels()
    out = {}
    for kind in ("mono", "poly"):
        for defective in (False, True):
            group = [path for path, prob, k in rows if k == kind and (prob > 0) == defective]
            step = max(1, len(group) // ELPV_PER_GROUP)
            for path in group[::step][:ELPV_PER_GROUP]:
                image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
                if image is None:
                    raise OSError(f"cannot read {path}: reinstall elpv-dataset")
                out[f"elpv_{kind}_{path.stem}"] = image
    return out


def write_calibration_set(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {**_skimage_images(), **_elpv_images()}
    for name, image in images.items():
        bgr = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(out_dir / f"{name}.png"), bgr)
    return len(images)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    n = write_calibration_set(p.parse_args(argv).out_dir)
    print(f"wrote {n} calibration images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
