"""Log lines the systemd journal files under their level, so that ``journalctl -p err -u edge-agent`` finds errors.

Under systemd, stderr is a stream into journald, which gives every line the unit's default level (info) unless the
line starts with ``<N>``, the syslog level (sd-daemon(3)). journald also stamps each line itself, so our own time
would be printed twice. systemd sets ``JOURNAL_STREAM=<device>:<inode>`` of that stream; it is inherited by
children whose stderr may go elsewhere (a pipe, a file), so the prefix is used only when stderr still is that
stream. Every line of a record carries it: journald splits a traceback into one entry per line, and a
continuation line without a prefix would be filed as info. journald ends a line at a NUL byte too, so a NUL in a
message (a file name, a payload) is written as ``\\0``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType

#: Python's levels as syslog's (sd-daemon(3)): at or above the Python level, this syslog level.
_SYSLOG = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG = 7
#: On a terminal or in a file, the time says when; in the journal, journald says it.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def stderr_is_journal() -> bool:
    """Whether stderr is the stream systemd connected to journald (``JOURNAL_STREAM`` names its device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr, or one without a descriptor (a test's capture)
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def syslog_level(levelno: int) -> int:
    return next((syslog for python, syslog in _SYSLOG if levelno >= python), _DEBUG)


def _journal_lines(levelno: int, text: str) -> str:
    """``text`` with the ``<N>`` level on each of the lines journald will make of it (it splits at NUL too)."""
    level = f"<{syslog_level(levelno)}>"
    return "\n".join(level + line for line in text.replace("\0", "\\0").split("\n"))


def for_stderr(levelno: int, text: str) -> str:
    """A message written to stderr without `logging` (the CLI's errors): in the journal, every line under the
    level; elsewhere as it is."""
    return _journal_lines(levelno, text) if stderr_is_journal() else text


class JournalFormatter(logging.Formatter):
    """No time, and the ``<N>`` level on every line of the record (its traceback's too)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return _journal_lines(record.levelno, super().format(record))


def setup_logging(level: int) -> None:
    """Logging to stderr, in the journal's format when stderr is the journal. An uncaught exception (on the main
    thread or another) then goes through logging too, so its traceback is filed as critical, not as info."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter())
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def _log_uncaught(kind: type[BaseException], value: BaseException | None, tb: TracebackType | None,
                  where: str = "the main thread") -> None:
    logging.getLogger("edge_agent").critical("uncaught exception on %s", where, exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    """A thread that ends with ``SystemExit`` (``sys.exit()`` in it) ended on purpose: Python's own hook says
    nothing, and neither does this one."""
    if issubclass(args.exc_type, SystemExit):
        return
    _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback, args.thread.name if args.thread else "a thread")
