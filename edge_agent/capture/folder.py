"""Images from a folder, in name order; optionally watching for new files (a PLC or a line PC drops them)."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.capture.images import ImageFolderError, list_images, read_image
from edge_agent.system.atomic import write_text_atomic
from edge_agent.capture.base import EndOfStream, Frame, FrameSource, SourceError


class FolderSource(FrameSource):
    """Files are taken in name order, so name them so that new ones sort last (a timestamp or a counter).

    With ``cursor_file`` (the agent keeps it in its state folder when watching) the name of the last file
    judged survives a restart, and files already judged are not judged again; files that arrived while the
    agent was down are still taken. A file counts as judged once the next one is asked for, so a crash between
    reading a file and publishing its verdict judges that file again rather than never (at least once).
    """

    def __init__(self, path: str | Path, watch: bool = False, loop: bool = False, poll_s: float = 0.2,
                 cursor_file: str | Path | None = None) -> None:
        self.path = Path(path)
        self.watch, self.loop, self.poll_s = watch, loop, poll_s
        self.name = f"folder:{self.path}"
        self._seen: set[str] = set()
        self._queue: list[Path] = []
        self._cursor_file = Path(cursor_file) if cursor_file else None
        self._cursor = ""
        if self._cursor_file is not None and self._cursor_file.is_file():
            self._cursor = self._cursor_file.read_text().strip()
        self._failures: dict[str, int] = {}
        self._pending: str | None = None

    #: In a watched folder a file that cannot be decoded is tried again on later polls (it may still be
    #: being copied in); in a plain folder it is skipped at once.
    max_tries = 3

    def open(self) -> None:
        if not self.path.is_dir():
            raise SourceError(f"image folder not found: {self.path}")
        if self._cursor and not self._seen:  # judged before a restart: skip them once
            self._seen.update(p.name for p in list_images(self.path) if p.name <= self._cursor)

    def _refill(self) -> None:
        try:
            fresh = [p for p in list_images(self.path) if p.name not in self._seen]
        except ImageFolderError as exc:
            raise SourceError(str(exc)) from None
        self._queue.extend(fresh)

    def _commit(self) -> None:
        if self._cursor_file is not None and self._pending is not None:
            self._cursor = self._pending
            # Not fsynced: a cursor lost to a power cut only means a frame judged again (at least once).
            write_text_atomic(self._cursor_file, self._pending + "\n", durable=False)
        self._pending = None

    def close(self) -> None:
        """A clean stop: the last frame handed out was judged."""
        self._commit()

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
                raise EndOfStream(f"no more images in {self.path}")
            time.sleep(self.poll_s)
            return None
        path = self._queue.pop(0)
        try:
            image = read_image(path)
        except ImageFolderError as exc:
            tries = self._failures[path.name] = self._failures.get(path.name, 0) + 1
            limit = self.max_tries if self.watch else 1
            if tries >= limit:
                self._seen.add(path.name)
                raise SourceError(f"{exc}: skipped" + (f" after {tries} tries" if tries > 1 else "")) from None
            raise SourceError(f"{exc} (try {tries} of {limit}; still being copied?)") from None
        self._seen.add(path.name)
        self._failures.pop(path.name, None)
        self._pending = path.name
        return Frame(image, path.name)
