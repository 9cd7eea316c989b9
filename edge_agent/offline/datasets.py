"""Data sets in MVTec AD layout (``train/good``, ``test/good``, ``test/<defect>``), and the elpv set made into one.

Why MVTec layout: it is what the paper evaluates on and what a user can assemble from their own line (a
folder of good parts, a folder per defect kind), so evaluation takes any such folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.capture.images import ImageFolderError, list_images


@dataclass
class MVTecSet:
    root: Path
    train: list[Path]
    test: list[Path]
    test_labels: np.ndarray  # 1 = defect
    test_kinds: list[str]

    @property
    def name(self) -> str:
        return self.root.name


def load_mvtec(root: str | Path) -> MVTecSet:
    """Index a data set; errors say which folder is missing or empty."""
    root = Path(root)
    train = list_images(root / "train" / "good") if (root / "train" / "good").is_dir() else []
    if not train:
        raise ImageFolderError(f"{root}/train/good holds no images: is {root} in MVTec layout?")
    test_root = root / "test"
    if not (test_root / "good").is_dir():
        raise ImageFolderError(f"{test_root}/good is missing: evaluation needs good test images")
    test, labels, kinds = [], [], []
    for kind_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        for path in list_images(kind_dir):
            test.append(path)
            labels.append(int(kind_dir.name != "good"))
            kinds.append(kind_dir.name)
    labels_arr = np.array(labels, dtype=np.int8)
    if labels_arr.sum() == 0 or labels_arr.sum() == len(labels_arr):
        raise ImageFolderError(f"{test_root} needs both good images and at least one defect folder")
    return MVTecSet(root, train, test, labels_arr, kinds)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when the file system allows it (no second copy of a data set), copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def elpv_labels() -> list[tuple[Path, float, str]]:
    """(image path, defect probability, cell type) of every cell in the installed ``elpv-dataset`` package."""
    import elpv_dataset

    data = Path(elpv_dataset.__file__).parent / "data"
    rows = [line.split() for line in (data / "labels.csv").read_text().splitlines() if line.strip()]
    return [(data / path, float(prob), kind) for path, prob, kind in rows]


def write_elpv(out_dir: str | Path, cell_type: str, n_train: int = 100, seed: int = 0) -> Path:
    """The ``elpv-dataset`` solar cells of one type (mono/poly) in MVTec layout.

    Good = defect probability 0 (``n_train`` of them for training, the rest for testing); defective = defect
    probability 1. Cells at 1/3 and 2/3 are left out as the annotators' own doubt. Files are hard-linked (or
    copied) from the installed package, not re-encoded.
    """
    rows = [(path, prob) for path, prob, kind in elpv_labels() if kind == cell_type]
    if not rows:
        raise ValueError(f"unknown elpv cell type {cell_type!r}: mono or poly")
    good = [p for p, prob in rows if prob == 0]
    bad = [p for p, prob in rows if prob == 1]
    order = np.random.default_rng(seed).permutation(len(good))
    split = {"train/good": [good[i] for i in order[:n_train]], "test/good": [good[i] for i in order[n_train:]],
             "test/defective": bad}
    root = Path(out_dir) / f"elpv_{cell_type}"
    for sub, paths in split.items():
        folder = root / sub
        folder.mkdir(parents=True, exist_ok=True)
        for src in paths:
            dst = folder / src.name
            if not dst.exists():
                link_or_copy(src, dst)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the elpv solar-cell sets (mono, poly) in MVTec layout.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n-train", type=int, default=100)
    args = p.parse_args(argv)
    for kind in ("mono", "poly"):
        s = load_mvtec(write_elpv(args.out_dir, kind, args.n_train))
        print(f"{s.root}: {len(s.train)} train, {int((s.test_labels == 0).sum())} good test, "
              f"{int(s.test_labels.sum())} defective test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
