"""Images from a folder, in name order; optionally watching for new files (a PLC or a line PC drops them)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from edge_agent.capture.images import (
    MAX_PIXELS,
    ImageFolderError,
    ImageTooLargeError,
    list_images,
    printable,
    read_image,
)
from edge_agent.system.atomic import write_text_atomic
from edge_agent.capture.base import EndOfStream, Frame, FrameSource, SourceError

log = logging.getLogger(__name__)


def _read_cursor(path: Path) -> str:
    """The last file judged, from the cursor file; "" (judge everything again) when it is missing, unreadable
    or corrupt, which is logged: at least once, never a crash.

    The file holds ``{"last": name}`` as ASCII JSON, so that a name that is not valid UTF-8 (Python keeps its
    bytes as lone surrogates) survives the round trip exactly; a cursor written before holds the bare name.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read the folder cursor %s (%s): treated as absent, files already judged may be "
                    "judged again", printable(path), exc.strerror or exc)
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("last"), str) and data["last"]:
            return data["last"]
        name = text.strip()
        if data is None and name and "\n" not in name and "/" not in name and "\x00" not in name:
            return name  # the older format: the bare name on one line
    log.warning("corrupt folder cursor %s (%r...): treated as absent, files already judged may be judged again",
                printable(path), raw[:40])
    return ""


class FolderSource(FrameSource):
    """Files are taken in name order, so name them so that new ones sort last (a timestamp or a counter).

    With ``cursor_file`` (the agent keeps it in its state folder when watching) the name of the last file
    judged survives a restart, and files already judged are not judged again; files that arrived while the
    agent was down are still taken. A file counts as judged once the next one is asked for, so a crash between
    reading a file and publishing its verdict judges that file again rather than never (at least once).

    A file that cannot be used is named in a SourceError (with ``printable``: a name that is not UTF-8 shows
    its bytes as ``\\xff``), counted in ``skipped``, and the folder goes on. A file larger than ``max_pixels``
    (read from its header, before decoding) is skipped at once. A frame's ``name`` is printable too, so that a
    verdict can always be encoded; the cursor keeps the real name. A cursor that cannot be written is logged
    and counted in ``cursor_errors``; judging goes on (a restart then judges some files again).
    """

    def __init__(self, path: str | Path, watch: bool = False, loop: bool = False, poll_s: float = 0.2,
                 cursor_file: str | Path | None = None, max_pixels: int | None = MAX_PIXELS) -> None:
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, not {max_pixels}")
        self.path = Path(path)
        self.watch, self.loop, self.poll_s = watch, loop, poll_s
        self.max_pixels = max_pixels
        self.name = f"folder:{printable(self.path)}"
        self._seen: set[str] = set()
        self._queue: list[Path] = []
        self._cursor_file = Path(cursor_file) if cursor_file else None
        self._cursor = _read_cursor(self._cursor_file) if self._cursor_file is not None else ""
        self._failures: dict[str, int] = {}
        self._pending: str | None = None
        self.skipped = 0
        self.cursor_errors = 0
        self._cursor_error: str | None = None

    #: In a watched folder a file that cannot be decoded is tried again on later polls (it may still be
    #: being copied in); in a plain folder it is skipped at once.
    max_tries = 3

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"image folder not found: {printable(self.path)}")
        if self._cursor and not self._seen:  # judged before a restart: skip them once
            self._seen.update(p.name for p in self._list() if p.name <= self._cursor)

    def _list(self) -> list[Path]:
        try:
            return list_images(self.path)
        except (ImageFolderError, OSError) as exc:
            raise SourceError(str(exc) if isinstance(exc, ImageFolderError)
                              else f"cannot list {printable(self.path)}: {exc.strerror or exc}") from None

    def _refill(self) -> None:
        listing = self._list()
        present = {p.name for p in listing}
        self._seen &= present  # files the line archived or deleted: forget them, or the set grows for months
        self._queue.extend(p for p in listing if p.name not in self._seen)

    def _commit(self) -> None:
        if self._cursor_file is not None and self._pending is not None:
            self._cursor = self._pending
            # Not fsynced: a cursor lost to a power cut only means a frame judged again (at least once).
            # ASCII JSON: a name that is not UTF-8 is kept as escapes (\udcff) and read back exactly.
            text = json.dumps({"last": self._pending}) + "\n"
            try:
                write_text_atomic(self._cursor_file, text, durable=False)
            except OSError as exc:
                self.cursor_errors += 1
                error = f"{type(exc).__name__}: {exc.strerror or exc}"
                if error != self._cursor_error:  # once per kind of failure, not once per frame
                    log.warning("cannot write the folder cursor %s (%s); judging goes on, but a restart will judge "
                                "files again", printable(self._cursor_file), error)
                self._cursor_error = error
            else:
                self._cursor_error = None
        self._pending = None

    def close(self) -> None:
        """A clean stop: the last frame handed out was judged."""
        self._commit()

    def _skip(self, name: str, exc: ImageFolderError, tries: int = 1) -> SourceError:
        self._seen.add(name)
        self._failures.pop(name, None)
        self.skipped += 1
        return SourceError(f"{exc}: skipped" + (f" after {tries} tries" if tries > 1 else ""))

    def read(self) -> Frame | None:
        """The next image; ``None`` after one poll interval when a watched folder has nothing new."""
        self._commit()
        if not self._queue:
            self._refill()
        if not self._queue and self.loop and self._seen:
            self._seen.clear()
            self._refill()
        if not self._queue:
            if not self.watch:
                raise EndOfStream(f"no more images in {printable(self.path)}")
            time.sleep(self.poll_s)
            return None
        path = self._queue.pop(0)
        try:
            image = read_image(path, self.max_pixels)
        except ImageTooLargeError as exc:  # its header will not shrink: no point in trying again
            raise self._skip(path.name, exc) from None
        except ImageFolderError as exc:
            tries = self._failures[path.name] = self._failures.get(path.name, 0) + 1
            limit = self.max_tries if self.watch else 1
            if tries >= limit:
                raise self._skip(path.name, exc, tries) from None
            raise SourceError(f"{exc} (try {tries} of {limit}; still being copied?)") from None
        self._seen.add(path.name)
        self._failures.pop(path.name, None)
        self._pending = path.name
        try:  # when the file was written: the frame keeps its identity (name, time) if it is judged again
            captured_at = path.stat().st_mtime
        except OSError:
            captured_at = time.time()
        return Frame(image, printable(path.name), captured_at)
