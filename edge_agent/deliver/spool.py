"""A durable, bounded, ordered on-disk queue of outgoing MQTT messages (SQLite, standard library only).

Why a spool: a verdict is made whether or not the broker is reachable, and "none is lost, across an agent
restart too" (docs/architecture.md, "MQTT contract"). So every QoS 1 message is committed here first by the capture thread
and removed (``ack``) by the sender thread only after the broker acknowledged it (PUBACK). A crash between the
PUBACK and the ack sends the message again after a restart: delivery is at least once, never at most once.

Durability: WAL journal with ``synchronous=NORMAL``. In WAL mode a commit is durable as soon as it is written to
the WAL file, which happens before ``put`` returns, so a verdict survives the agent being killed (SIGKILL, OOM,
crash). What NORMAL gives up is an fsync per commit: on power loss the last commits (those not yet checkpointed
or synced by the OS, typically well under a second) can be rolled back, though the database itself stays
consistent. ``FULL`` would close that window at the price of one fsync per verdict, which on an SD card costs
milliseconds to tens of milliseconds on the capture thread and wears the card; the trade-off is deliberate.

One process should own a spool file at a time (the agent); ``Spool`` is safe to share between its threads.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

ON_FULL_POLICIES = ("drop-oldest", "drop-newest")
#: At most one "dropped messages" warning per this many seconds, however fast messages are dropped.
DROP_WARNING_INTERVAL_S = 10.0
#: What ``put`` returns when the bound made it discard the new message (ids start at 1).
DROPPED = -1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DROPPED_COUNTER = "spool.dropped"
_SEQUENCE_PREFIX = "sequence."


class _CorruptSpool(Exception):
    """SQLite reported the spool file as corrupt or as not a database."""


class SpoolItem(NamedTuple):
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


class Spool:
    """Durable FIFO of MQTT messages with a size bound and persisted counters.

    ``max_messages`` bounds the disk a broker outage can use; when it is reached ``on_full`` decides which end
    loses: ``"drop-oldest"`` (default: the newest verdicts describe the line as it is now) or ``"drop-newest"``
    (keep the history that was already recorded). Every drop is counted in ``dropped`` (persisted) and
    reported by a rate-limited WARNING.

    A file that SQLite reports as corrupt (or not a database at all) is renamed aside with a timestamp, logged
    at ERROR, and replaced by a fresh spool, so one bad file cannot keep the agent from starting forever. The
    messages and counters in the bad file are lost to the agent (they stay in the renamed file for forensics),
    and sequence numbers start again at 1.
    """

    def __init__(self, path: str | os.PathLike[str], max_messages: int = 100_000, on_full: str = "drop-oldest"):
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, got {on_full!r}")
        if not isinstance(max_messages, int) or max_messages < 1:
            raise ValueError(f"max_messages must be a positive integer, got {max_messages!r}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.on_full = on_full
        self._lock = threading.Lock()
        self._last_drop_warning = -math.inf
        self._unreported_drops = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except _CorruptSpool as exc:
            self._move_aside(exc)
            self._db = self._open()
        self._count = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        self._dropped = self._counter(_DROPPED_COUNTER)

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so transactions are exactly the explicit BEGIN ... COMMIT blocks.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _CorruptSpool(f"quick_check: {'; '.join(problems[:5])}")
        except sqlite3.DatabaseError as exc:
            db.close()
            if exc.sqlite_errorcode in _CORRUPTION_CODES:
                raise _CorruptSpool(str(exc)) from exc
            raise
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, exc: _CorruptSpool) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        # The -wal/-shm files belong to the bad database; left in place, SQLite could replay them into the new one.
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, f"{aside}{suffix}")
        log.error("spool %s is corrupt (%s): moved it to %s and started an empty spool; its unsent messages "
                  "are not sent and sequence numbers restart at 1", self.path, exc, aside)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock up front instead of failing halfway."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def _increment(self, name: str, by: int) -> int:
        """Add ``by`` to a persisted counter inside the caller's transaction and return the new value."""
        value = self._counter(name) + by
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))
        return value

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Append a message; return its id, or ``DROPPED`` when the bound discarded it (``drop-newest``)."""
        now = time.time()
        with self._lock:
            overflow = self._count + 1 - self.max_messages
            if overflow > 0 and self.on_full == "drop-newest":
                self._record_drops(1)
                return DROPPED
            with self._transaction():
                if overflow > 0:
                    self._db.execute("DELETE FROM messages WHERE id IN "
                                     "(SELECT id FROM messages ORDER BY id LIMIT ?)", (overflow,))
                    self._dropped = self._increment(_DROPPED_COUNTER, overflow)
                cur = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)",
                    (topic, bytes(payload), int(qos), int(bool(retain)), now))
            if overflow > 0:
                self._count -= overflow
                self._warn_drops(overflow)
            self._count += 1
            return cur.lastrowid

    def _record_drops(self, n: int) -> None:
        with self._transaction():
            self._dropped = self._increment(_DROPPED_COUNTER, n)
        self._warn_drops(n)

    def _warn_drops(self, n: int) -> None:
        """Warn about drops at most once per DROP_WARNING_INTERVAL_S: a flood must not flood the log too."""
        self._unreported_drops += n
        now = time.monotonic()
        if now - self._last_drop_warning >= DROP_WARNING_INTERVAL_S:
            self._flush_drop_warning()
            self._last_drop_warning = now

    def _flush_drop_warning(self) -> None:
        if self._unreported_drops:
            log.warning("spool %s is full (%d messages, %s): dropped %d message(s) since the last warning, "
                        "%d in total", self.path, self.max_messages, self.on_full, self._unreported_drops,
                        self._dropped)
            self._unreported_drops = 0

    def peek(self, limit: int) -> list[SpoolItem]:
        """Return up to ``limit`` un-acked messages, oldest first, without removing them."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, created_at FROM messages "
                                    "ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [SpoolItem(i, t, bytes(p), q, bool(r), c) for i, t, p, q, r, c in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Remove delivered messages; unknown ids (already acked or dropped) are ignored."""
        params = [(i,) for i in ids]
        if not params:
            return
        with self._lock:
            before = self._db.total_changes
            with self._transaction():
                self._db.executemany("DELETE FROM messages WHERE id = ?", params)
            self._count -= self._db.total_changes - before

    def next_sequence(self, name: str = "verdict") -> int:
        """Return the next value (1, 2, ...) of a named counter that is persisted and never goes back.

        Committed before it is returned, so a restart continues above every number handed out (a crash may
        leave a gap, never a repeat): subscribers can de-duplicate at-least-once deliveries by it.
        """
        with self._lock:
            with self._transaction():
                return self._increment(_SEQUENCE_PREFIX + name, 1)

    @property
    def dropped(self) -> int:
        """Messages discarded by the bound over the spool file's lifetime (persisted)."""
        return self._dropped

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            self._flush_drop_warning()
            self._db.close()
