"""Reading image files, shared by the converter's calibration, fitting and evaluation.

Why one place: a folder of images is how users hand over good parts and calibration sets, and a bad file
in it must be named in the error, not crash a long run halfway through.

Why the size is read from the header first: a few hundred kilobytes of PNG can hold 20000 x 20000 zeros, which
OpenCV decodes into gigabytes (out of memory on a Pi). OpenCV's own limit, ``OPENCV_IO_MAX_IMAGE_PIXELS``, is
read once when the library loads (setting it later in the process does nothing) and defaults to 2^30 pixels,
so each file's width and height are read from its first bytes (PNG, JPEG, BMP, TIFF, WebP) and checked against
``max_pixels`` before anything is decoded. Content OpenCV decodes but this module does not recognise is left to
OpenCV's limit and checked again after decoding.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Default limit on width x height: 64 MP, above the largest camera supported (a 64 MP Arducam is 9152 x 6944;
#: the Pi HQ camera is 12.3 MP, Camera Module 3 11.9 MP). An RGB frame of that size is 192 MB once decoded.
MAX_PIXELS = 64 * 1024 * 1024


class ImageFolderError(ValueError):
    """A folder of images is missing, empty, too small, or holds files that cannot be read."""


class ImageTooLargeError(ImageFolderError):
    """The file's header declares more pixels than allowed; it was not decoded."""


def printable(name: str | os.PathLike) -> str:
    """A file name or path safe to log, put in JSON or encode as UTF-8: bytes that are not UTF-8 (kept by Python
    as lone surrogates, ``os.fsdecode(b"bad\\xff.png")``) become backslash escapes (``bad\\xff.png``)."""
    text = os.fspath(name)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so that runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageFolderError(f"image folder not found: {printable(folder)}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# ---- sizes from headers ------------------------------------------------------------------------------------

def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return (w, h) if w and h else None  # height 0: given later (DNL); not supported here
        i += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    header = struct.unpack("<I", data[14:18])[0]
    if header == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    w, h = struct.unpack("<ii", data[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    end = "<" if data[:2] == b"II" else ">"
    version = struct.unpack(end + "H", data[2:4])[0]
    if version == 42:
        ifd = struct.unpack(end + "I", data[4:8])[0]
        count_fmt, entry, value_at = "H", 12, 8
    elif version == 43 and len(data) >= 16:  # BigTIFF
        ifd = struct.unpack(end + "Q", data[8:16])[0]
        count_fmt, entry, value_at = "Q", 20, 12
    else:
        return None
    count_size = struct.calcsize(count_fmt)
    if ifd + count_size > len(data):
        return None
    count = struct.unpack(end + count_fmt, data[ifd:ifd + count_size])[0]
    sizes: dict[int, int] = {}
    types = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    for k in range(min(count, 4096)):
        at = ifd + count_size + k * entry
        if at + entry > len(data):
            break
        tag, kind = struct.unpack(end + "HH", data[at:at + 4])
        if tag in (256, 257) and kind in types:
            fmt = end + types[kind]
            sizes[tag] = struct.unpack(fmt, data[at + value_at:at + value_at + struct.calcsize(fmt)])[0]
    if 256 in sizes and 257 in sizes:
        return sizes[256], sizes[257]
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, BMP, TIFF or WebP file; ``None`` when the content is
    none of these or its header is cut short."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            return _bmp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (struct.error, IndexError):
        return None
    return None


def _too_large(path: str | Path, w: int, h: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"image {printable(path)} is {w} x {h} = {w * h / 1e6:.1f} MP, more than the limit "
                              f"of {max_pixels / 1e6:.1f} MP (max_pixels); not decoded")


def read_image(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """An RGB uint8 image (grayscale and alpha converted), or ImageFolderError naming the file.

    ImageTooLargeError, before decoding, when the header declares more than ``max_pixels`` pixels (``None``:
    no limit of ours, only OpenCV's).
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, not {max_pixels}")
    try:
        data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else np.empty(0, np.uint8)
    except OSError as exc:
        raise ImageFolderError(f"cannot read image {printable(path)}: {exc.strerror or exc}") from None
    if max_pixels is not None and data.size:
        size = image_size(data[:65536].tobytes())
        if size is None and data[:2].tobytes() == b"\xff\xd8":  # JPEG metadata can run past the first 64 KB
            size = image_size(data.tobytes())
        if size is not None and size[0] * size[1] > max_pixels:
            raise _too_large(path, *size, max_pixels)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as exc:  # OpenCV's own limits (OPENCV_IO_MAX_IMAGE_PIXELS) and decoder failures
        raise ImageFolderError(f"cannot read image {printable(path)}: {str(exc).strip().splitlines()[-1]}") from None
    if image is None:
        raise ImageFolderError(f"cannot read image {printable(path)}")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:  # a format not checked above
        raise _too_large(path, image.shape[1], image.shape[0], max_pixels)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_folder(folder: str | Path, min_images: int = 1, max_pixels: int | None = MAX_PIXELS,
                limit: int | None = None) -> tuple[list[Path], list[np.ndarray]]:
    """The images of a folder (the first ``limit`` in name order), checked up front: every unreadable file is named
    in one error. Only those are decoded, so a large folder costs no more memory than ``limit`` images."""
    paths = list_images(folder)[:limit]
    if not paths:
        raise ImageFolderError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {printable(folder)}")
    if len(paths) < min_images:
        raise ImageFolderError(f"{printable(folder)} holds {len(paths)} images, at least {min_images} are needed")
    images, bad = [], []
    for p in paths:
        try:
            images.append(read_image(p, max_pixels))
        except ImageFolderError:
            bad.append(printable(p.name))
    if bad:
        raise ImageFolderError(f"unreadable images in {printable(folder)}: {', '.join(bad)}")
    return paths, images
