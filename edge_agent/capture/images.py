"""Reading image files, shared by the converter's calibration, fitting and evaluation.

Why one place: a folder of images is how users hand over good parts and calibration sets, and a bad file
in it must be named in the error, not crash a long run halfway through.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolderError(ValueError):
    """A folder of images is missing, empty, too small, or holds files that cannot be read."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so that runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 image (grayscale and alpha converted), or ImageFolderError naming the file."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else np.empty(0, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageFolderError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_folder(folder: str | Path, min_images: int = 1) -> tuple[list[Path], list[np.ndarray]]:
    """All images of a folder, checked up front: every unreadable file is named in one error."""
    paths = list_images(folder)
    if not paths:
        raise ImageFolderError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if len(paths) < min_images:
        raise ImageFolderError(f"{folder} holds {len(paths)} images, at least {min_images} are needed")
    images, bad = [], []
    for p in paths:
        try:
            images.append(read_image(p))
        except ImageFolderError:
            bad.append(p.name)
    if bad:
        raise ImageFolderError(f"unreadable images in {folder}: {', '.join(bad)}")
    return paths, images
