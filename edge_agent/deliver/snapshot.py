"""The JPEG that goes with an alert: the frame, with the detector's heat map over it when there is one.

Why: an operator looking at an alert on a phone must see at once where the defect is; a bare score does not
say that, and a full-resolution frame is too large to send over a plant's Wi-Fi for every anomaly.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrunk so that its longer side is at most ``max_side``; any aspect ratio (a 4000 x 2 line-scan strip
    keeps at least one pixel on its short side)."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"cannot make a snapshot of an empty {w} x {h} image")
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (min(max_side, max(1, round(w * scale))), min(max_side, max(1, round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


#: The heat map's colour scale ends (dark red) at this multiple of the threshold; the threshold itself sits at
#: two thirds of the scale (yellow-orange in JET), so a good part never looks red and a clear defect always does.
SATURATION = 1.5


def overlay(rgb: np.ndarray, heatmap: np.ndarray, level: float, alpha: float = 0.45) -> np.ndarray:
    """Heat map (any grid) stretched over the frame in the JET colour map, anchored to the threshold.

    Why anchored: scaled per image, every alert's hottest spot is equally red and the picture says nothing about
    how sure the camera is. Here ``level`` is the image's score over its threshold; the map's peak is drawn at that
    level and the rest in proportion to it, so the same colour means the same evidence on every frame, whatever
    the detector's own units (patch distances, ratios to a typical good part).
    """
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    h, w = rgb.shape[:2]
    if h < 1 or w < 1 or heatmap.size == 0:
        raise ValueError(f"cannot overlay a {heatmap.shape} heat map on a {w} x {h} image")
    hm = np.maximum(cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0)
    peak = float(hm.max())
    level = min(max(float(level), 0.0), SATURATION) if not math.isnan(level) else SATURATION  # inf: no threshold
    scale = level / (peak * SATURATION) if peak > 0 else 0.0
    norm = np.clip(hm * scale, 0, 1)
    colour = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1 - alpha, colour, alpha, 0)


def alert_picture(frame: np.ndarray, heatmap: np.ndarray | None, box: tuple[int, int, int, int] | None,
                  level: float = 1.0) -> np.ndarray:
    """The whole frame, with the heat map over the region the detector saw and that region's box drawn on it
    (``box`` ``(x, y, width, height)``; ``None``: the whole frame), so the operator sees the part in its place.
    ``level``: the score over the threshold (see `overlay`)."""
    picture = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB) if frame.ndim == 2 else frame.copy()
    fh, fw = picture.shape[:2]
    x, y, w, h = box or (0, 0, fw, fh)
    if heatmap is not None:
        picture[y:y + h, x:x + w] = overlay(picture[y:y + h, x:x + w], heatmap, level)
    if box is not None:
        cv2.rectangle(picture, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), max(2, min(fw, fh) // 200))
    return picture


def contact_sheet(images: list[np.ndarray], width: int) -> np.ndarray:
    """The images side by side in a roughly square grid ``width`` pixels wide, each numbered in the order it was
    taken, so an operator can see at a glance what a retrain learned (ten different parts, or one part ten times)."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    tile = max(16, width // columns)
    sheet = np.full((rows * tile, columns * tile, 3), 40, np.uint8)
    for i, image in enumerate(images):
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image
        small = _fit(rgb, tile - 4)
        h, w = small.shape[:2]
        y0, x0 = (i // columns) * tile + (tile - h) // 2, (i % columns) * tile + (tile - w) // 2
        sheet[y0:y0 + h, x0:x0 + w] = small
        cv2.putText(sheet, str(i + 1), ((i % columns) * tile + 4, (i // columns) * tile + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return sheet


def jpeg(rgb: np.ndarray, quality: int = 80, max_side: int = 640) -> bytes:
    """JPEG bytes of an RGB (or grayscale) image, shrunk so its longer side is at most ``max_side``."""
    image = _fit(rgb, max_side)
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
