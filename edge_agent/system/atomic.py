"""Writing files so that a crash or a power cut leaves the old content or the new, never half of one.

Why one place: fitted detectors, the manifest, the detector pointer, the folder cursor and state.json are all
read back by a device that may have lost power mid-write; each goes through a temporary file in the same
folder, fsync, rename, and an fsync of the folder so that the rename itself survives.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; not every platform lets a directory be opened, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """``durable=False`` keeps the all-or-nothing rename but skips both fsyncs: for state rewritten every frame
    (the folder cursor), where a power cut may lose the last update but not corrupt the file, and two fsyncs per
    frame would cost an SD card its life."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | Path, text: str, durable: bool = True) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), durable)
