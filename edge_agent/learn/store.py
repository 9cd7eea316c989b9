"""Fitted detectors on the device: each retrain saved beside the previous ones, one marked current.

Why keep history: a retrain at shift start on a bad batch (wrong part, dirty lens) must be undoable with one
command, without refitting. The ``current`` pointer is a small JSON file replaced atomically, so a power cut
leaves either the old or the new detector in use, and every file is checked (format, checksum, and the feature
model it was fitted for) before it is used.

Why a sequence number and not the time: a Pi has no real-time clock, so the wall clock can jump backwards (boot
before NTP, a wrong manual date). History ordered by time stamps would then put the newest fit first: rollback
finds "no earlier detector" and pruning deletes the newest fits. Each file name therefore starts with a
zero-padded counter, one more than the highest already in the folder (``000042-<UTC stamp>-<detector>-n<N>.edet``);
the stamp is only for people. Files from before the counter (``<UTC stamp>-...``) still load; they count as older
than every numbered file, in their name order, so a device that upgrades keeps its rollback.

Each detector may have a picture beside it (same name, ``.jpg``): the good parts it was fitted on, so an operator
can check what the camera learned (one part shown ten times, a hand in the frame) long after the retrain.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path

from edge_agent.learn.detectors.base import Detector
from edge_agent.learn.detectors.persistence import DetectorFileError, LoadedDetector, load_detector, save_detector
from edge_agent.learn.fitting import FitResult, FitSettings
from edge_agent.system.atomic import write_bytes_atomic, write_text_atomic
from edge_agent.embed.manifest import Manifest

log = logging.getLogger(__name__)

_SUFFIX = ".edet"
_PICTURE = ".jpg"
_POINTER = "current.json"
_SEQ_WIDTH = 6
_NUMBERED = re.compile(r"^(\d+)-")  # a counter then a dash; an old name starts with digits then "T"


def _order(path: Path) -> tuple[int, str]:
    """History order: the counter, never the wall clock. Old un-numbered files sort first, by name."""
    m = _NUMBERED.match(path.name)
    return (int(m.group(1)) if m else -1, path.name)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class StoreError(ValueError):
    """No fitted detector to use or to roll back to."""


class DetectorStore:
    def __init__(self, state_dir: str | Path, keep: int = 5) -> None:
        self.dir = Path(state_dir) / "detectors"
        self.keep = keep

    def history(self) -> list[Path]:
        """Saved detectors, oldest first (by the sequence number their names start with; see the module doc)."""
        return sorted(self.dir.glob(f"*{_SUFFIX}"), key=_order) if self.dir.is_dir() else []

    def _pointer(self) -> dict | None:
        """``{"file": current, "previous": [what was current before it, newest first]}``; None when unusable."""
        pointer = self.dir / _POINTER
        if not pointer.is_file():
            return None
        try:
            data = json.loads(pointer.read_text())
            name = data["file"]
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        if not isinstance(name, str) or "/" in name:
            log.error("%s is unreadable: no current detector", pointer)
            return None
        return data

    def _previous(self, current: Path | None) -> list[str]:
        """What was current before ``current``, newest first: the pointer's history, or for a pointer written
        before it kept one, the files older than ``current`` in number order."""
        data = self._pointer()
        if data is not None and isinstance(data.get("previous"), list):
            return [n for n in data["previous"] if isinstance(n, str) and "/" not in n]
        return [p.name for p in reversed(self.history()) if current is None or _order(p) < _order(current)]

    def current_path(self) -> Path | None:
        data = self._pointer()
        path = self.dir / data["file"] if data else None
        return path if path is not None and path.is_file() else None

    def load_current(self, manifest: Manifest) -> LoadedDetector | None:
        """The current detector if it was fitted for this feature model; ``None`` when unfitted."""
        path = self.current_path()
        if path is None:
            return None
        return load_detector(path, manifest.model_sha256, manifest.model_id)

    def save(self, result: FitResult, settings: FitSettings, manifest: Manifest,
             context: dict | None = None, picture: bytes | None = None) -> Path:
        """Write a new fit beside the previous ones and make it current. ``context``: what else the fit depended
        on (the region of interest), kept in its metadata; ``picture``: its training parts (JPEG)."""
        meta = {**result.metadata(settings), **(context or {}), "model_sha256": manifest.model_sha256,
                "model_id": manifest.model_id}
        return self.save_loaded(result.detector, meta, picture)

    def save_loaded(self, detector: Detector, metadata: dict, picture: bytes | None = None) -> Path:
        """Write a detector with its metadata (e.g. a moved threshold) and picture, point ``current`` at it,
        prune old ones. The picture is written first: a detector file never points at a picture still missing."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._new_path(metadata)
        if picture is not None:
            write_bytes_atomic(path.with_suffix(_PICTURE), picture)
        try:
            save_detector(path, detector, metadata)
        except BaseException:
            path.with_suffix(_PICTURE).unlink(missing_ok=True)  # no picture left without its detector
            raise
        current = self.current_path()
        self._point(path, [current.name, *self._previous(current)] if current else [])
        self._prune(path)
        return path

    def picture(self, path: Path | None) -> bytes | None:
        """The training parts' picture kept with the detector at ``path``; ``None`` when it has none."""
        try:
            return path.with_suffix(_PICTURE).read_bytes() if path is not None else None
        except FileNotFoundError:
            return None

    def rollback(self, manifest: Manifest) -> Path:
        """Make the detector that was current before this one current again, if it loads for this model.

        By the pointer's history, not by file order: after a rollback and a threshold change, a second rollback
        goes back to the rolled-back-to detector, never to the one the operator rejected. A pointer from before
        that history: the newest file older than the current one.
        """
        candidates = [self.dir / name for name in self._previous(self.current_path())]
        for i, path in enumerate(candidates):
            if not path.is_file():
                continue
            try:
                load_detector(path, manifest.model_sha256, manifest.model_id)
            except DetectorFileError as exc:
                log.warning("rollback skips %s: %s", path.name, exc)
                continue
            self._point(path, [p.name for p in candidates[i + 1:]])
            return path
        raise StoreError("no earlier detector fitted for this model to roll back to")

    def _new_path(self, metadata: dict) -> Path:
        """One past the highest counter in the folder (the newest file is never pruned, so it only grows)."""
        seq = max([0, *(_order(p)[0] for p in self.history())]) + 1
        stamp = _utc_now().strftime("%Y%m%dT%H%M%S%fZ")
        tail = f"{metadata.get('detector', 'detector')}-n{metadata.get('n_train', 0)}{_SUFFIX}"
        return self.dir / f"{seq:0{_SEQ_WIDTH}d}-{stamp}-{tail}"

    def _point(self, path: Path, previous: list[str]) -> None:
        data = {"file": path.name, "previous": previous[: self.keep]}
        write_text_atomic(self.dir / _POINTER, json.dumps(data) + "\n")

    def _prune(self, current: Path) -> None:
        for old in self.history()[: -self.keep]:
            if old != current:
                old.with_suffix(_PICTURE).unlink(missing_ok=True)
                old.unlink(missing_ok=True)
