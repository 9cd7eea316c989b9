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

Identity of messages: because a power cut can roll back the last commits, a persisted counter alone cannot
promise never to hand out a number twice. So every `Spool` opened gets a new random ``epoch`` (stored in the
file for forensics); ``next_sequence`` numbers strictly increase within an epoch and continue from the
persisted value across restarts, and ``(epoch, seq)`` is never reused for two different messages. Counters are
kept in memory and written with the next commit (the message that carries the number), so numbering needs no
disk space of its own.

Full disk: a full disk must not stop the agent, nor the delivery of what is already spooled. The spool keeps a
reserve file (``<spool>.reserve``, ``reserve_bytes``) next to it and a WAL no bigger than half of it
(``wal_autocheckpoint``). When a write fails for lack of space the reserve is deleted, which leaves room for the
WAL and a checkpoint, so acks keep working and the WAL, once checkpointed, is reused instead of growing; while
the disk stays full a new message is spooled only into pages that acks freed (``drop-oldest`` first drops the
oldest messages to free some), otherwise it is dropped and counted. An ack that still cannot be written is
kept in memory (the message is not sent again by this process) and written later. Nothing here raises for a
full disk; the reserve is made again, and normal operation resumes, once the file system has room for it.
``low_disk`` and ``stats()`` say how close the disk is to that, and a WARNING says it well before.

One process should own a spool file at a time (the agent); ``Spool`` is safe to share between its threads.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

ON_FULL_POLICIES = ("drop-oldest", "drop-newest")
#: At most one "dropped messages" warning per this many seconds, however fast messages are dropped.
DROP_WARNING_INTERVAL_S = 10.0
#: At most one "disk is full" / "disk space is low" warning per this many seconds.
DISK_WARNING_INTERVAL_S = 60.0
#: What ``put`` returns when the bound or a full disk made it discard the new message (ids start at 1).
DROPPED = -1
#: Default size of the reserve file, freed when the disk fills so that acks and checkpoints still have room.
RESERVE_BYTES = 8 * 1024 * 1024
#: Default free space on the spool's file system below which ``low_disk`` is set and a WARNING is logged.
WARN_FREE_BYTES = 64 * 1024 * 1024
#: ``put`` asks the file system for its free space after this long or after this many bytes put.
_DISK_CHECK_S = 1.0
_DISK_CHECK_BYTES = 64 * 1024
#: Upper bound of the WAL size, in pages, between checkpoints (SQLite's own default).
_MAX_WAL_PAGES = 1000

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
CREATE TABLE IF NOT EXISTS epochs (
    epoch TEXT PRIMARY KEY,
    opened_at REAL NOT NULL
);
"""
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DROPPED_COUNTER = "spool.dropped"
_SEQUENCE_PREFIX = "sequence."


class _CorruptSpool(Exception):
    """SQLite reported the spool file as corrupt or as not a database."""


def _file_system_size(folder: Path) -> int:
    """Total bytes of the file system holding ``folder`` (a very large number when it cannot be told)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return 2**62
    return st.f_blocks * st.f_frsize


class SpoolItem(NamedTuple):
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float


def _is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, or an I/O error of a write (SQLite reports some ENOSPC cases, e.g. -shm growth, that way)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "full" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


class Spool:
    """Durable FIFO of MQTT messages with a size bound, persisted counters and a per-open ``epoch``.

    ``max_messages`` bounds the disk a broker outage can use; when it is reached ``on_full`` decides which end
    loses: ``"drop-oldest"`` (default: the newest verdicts describe the line as it is now) or ``"drop-newest"``
    (keep the history that was already recorded). Every drop is counted in ``dropped`` (persisted) and
    reported by a rate-limited WARNING. A full disk drops too (see the module docstring), never raises.

    A file that SQLite reports as corrupt (or not a database at all) is renamed aside with a timestamp, logged
    at ERROR, and replaced by a fresh spool, so one bad file cannot keep the agent from starting forever. The
    messages and counters in the bad file are lost to the agent (they stay in the renamed file for forensics),
    and sequence numbers start again at 1 (in a new epoch, as after every open).
    """

    def __init__(self, path: str | os.PathLike[str], max_messages: int = 100_000, on_full: str = "drop-oldest",
                 *, reserve_bytes: int = RESERVE_BYTES, warn_free_bytes: int = WARN_FREE_BYTES):
        if on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, got {on_full!r}")
        if not isinstance(max_messages, int) or max_messages < 1:
            raise ValueError(f"max_messages must be a positive integer, got {max_messages!r}")
        if reserve_bytes < 0 or warn_free_bytes < 0:
            raise ValueError("reserve_bytes and warn_free_bytes must not be negative")
        self.path = Path(path)
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.max_messages = max_messages
        self.on_full = on_full
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # At most an eighth of the file system: on a small state partition a fixed reserve would not fit at all,
        # and the spool would count itself full from the start.
        self.reserve_bytes = min(reserve_bytes, _file_system_size(self.path.parent) // 8)
        self.warn_free_bytes = warn_free_bytes
        #: New at every open: ``(epoch, seq)`` identifies a numbered message for good (see the module docstring).
        self.epoch = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._closed = False
        self._last_drop_warning = -math.inf
        self._unreported_drops = 0
        self._disk_full = False  # a write failed for lack of space and the reserve is not back yet
        self._disk_drops = 0  # drops for a full disk not yet reported
        self._last_disk_warning = -math.inf
        self._disk_free = math.inf
        self._disk_checked = -math.inf
        self._put_since_check = 0  # bytes put since the last look at the free space
        self._counters: dict[str, int] = {}  # in memory; the source of truth for this process
        self._dirty: set[str] = set()  # counters (and "epoch") not yet written to the file
        self._acked: set[int] = set()  # acked, but the delete could not be written yet (full disk)
        self._log_new_or_empty_file()
        try:
            self._db = self._open_with_room()
        except _CorruptSpool as exc:
            self._move_aside(exc)
            self._db = self._open_with_room()
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        # The WAL between checkpoints stays within half the reserve: freeing the reserve always leaves room
        # for the WAL to reach its size and for a checkpoint to move its pages into the database.
        wal_pages = max(16, min(_MAX_WAL_PAGES, self.reserve_bytes // (2 * self._page_size)))
        self._db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        self._count = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        self._counters[_DROPPED_COUNTER] = self._stored_counter(_DROPPED_COUNTER)
        self._dirty.add("epoch")
        self._check_disk(force=True)
        if not self._make_reserve():
            self._enter_disk_full("there is no room for its reserve")
        with self._lock:
            self._write(lambda: None)  # store the epoch now if there is room

    # --- opening ---------------------------------------------------------------------------------------------

    def _log_new_or_empty_file(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            log.info("spool %s does not exist: starting an empty spool, sequence numbers start at 1", self.path)
            return
        if size == 0:
            log.warning("spool %s is an empty (0-byte) file, e.g. cut short by a power loss: starting an empty "
                        "spool; unsent messages it held are lost and sequence numbers restart at 1 (in a new "
                        "epoch)", self.path)

    def _open_with_room(self) -> sqlite3.Connection:
        try:
            return self._open()
        except sqlite3.OperationalError as exc:
            if not _is_disk_full(exc):
                raise
            # No room for the -shm file: in exclusive locking mode SQLite keeps the WAL index in memory instead.
            log.warning("spool %s: cannot open it normally (%s; disk full?): opening it in exclusive mode",
                        self.path, exc)
            return self._open(exclusive=True)

    def _open(self, exclusive: bool = False) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so transactions are exactly the explicit BEGIN ... COMMIT blocks.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise _CorruptSpool(f"quick_check: {'; '.join(problems[:5])}")
        except sqlite3.DatabaseError as exc:
            db.close()
            if exc.sqlite_errorcode & 0xFF in _CORRUPTION_CODES:  # extended codes: SQLITE_CORRUPT_INDEX...
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
                  "are not sent and sequence numbers restart at 1 (in a new epoch)", self.path, exc, aside)

    # --- disk space ------------------------------------------------------------------------------------------

    def _check_disk(self, force: bool = False) -> float:
        """Free bytes on the spool's file system (cached for _DISK_CHECK_S); warns, rate-limited, when low."""
        now = time.monotonic()
        if force or now - self._disk_checked >= _DISK_CHECK_S or self._put_since_check >= _DISK_CHECK_BYTES:
            self._disk_checked = now
            self._put_since_check = 0
            try:
                st = os.statvfs(self.path.parent)
                self._disk_free = st.f_bavail * st.f_frsize
            except OSError:
                self._disk_free = math.inf
            if self._disk_free < self.warn_free_bytes and not self._disk_full:
                self._disk_warning(logging.WARNING, "spool %s: only %.1f MiB left on its file system (warning "
                                   "below %.1f MiB); when it is full, new messages are dropped", self.path,
                                   self._disk_free / 2**20, self.warn_free_bytes / 2**20)
        return self._disk_free

    def _disk_warning(self, level: int, msg: str, *args: Any, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_disk_warning >= DISK_WARNING_INTERVAL_S:
            self._last_disk_warning = now
            log.log(level, msg, *args)

    def _make_reserve(self) -> bool:
        """Make sure the reserve file exists at full size; False when there is no room for it."""
        if self.reserve_bytes == 0:
            return True
        try:
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.reserve_bytes)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.pwrite(fd, b"\0" * self.reserve_bytes, 0)  # file systems without fallocate
                os.fsync(fd)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            self.reserve_path.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("spool %s: cannot make its reserve file %s: %s", self.path, self.reserve_path, exc)
            return False

    def _enter_disk_full(self, why: str) -> None:
        released = self.reserve_path.exists()
        self.reserve_path.unlink(missing_ok=True)
        if not self._disk_full:
            self._disk_full = True
            self._disk_checked = -math.inf
            self._disk_warning(logging.ERROR, "spool %s: the disk is full (%s)%s; new messages are dropped "
                               "unless acked ones made room, what is spooled is still sent", self.path, why,
                               f": released the {self.reserve_bytes} bytes reserve" if released else "",
                               force=True)

    def _leave_disk_full_if_room(self) -> None:
        """Back to normal once the file system has room for the reserve and as much again."""
        if self._check_disk() >= 2 * self.reserve_bytes and self._make_reserve():
            self._disk_full = False
            self._flush_disk_drops()
            log.warning("spool %s: disk space is back (%.1f MiB free); spooling normally again", self.path,
                        self._check_disk(force=True) / 2**20)

    # --- transactions and counters ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock up front instead of failing halfway.

        It also writes what earlier transactions could not (counters, acks), so a commit carries them along.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._write_pending()
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already (e.g. SQLITE_FULL)
                self._db.execute("ROLLBACK")
            raise
        self._dirty.clear()
        self._count -= len(self._acked)
        self._acked.clear()

    def _write_pending(self) -> None:
        for name in self._dirty:
            if name == "epoch":
                self._db.execute("INSERT OR IGNORE INTO epochs (epoch, opened_at) VALUES (?, ?)",
                                 (self.epoch, time.time()))
            else:
                self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE "
                                 "SET value = max(value, excluded.value)", (name, self._counters[name]))
        if self._acked:
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in self._acked])

    def _write(self, body: Callable[[], None], retry: bool = True) -> bool:
        """Run ``body`` in a transaction. On a full disk: free the reserve, checkpoint, retry once if ``retry``;
        False if it could not be written (nothing of it was)."""
        for attempt in (1, 2):
            try:
                with self._transaction():
                    body()
                return True
            except sqlite3.OperationalError as exc:
                if not _is_disk_full(exc):
                    raise
                self._enter_disk_full(str(exc))
                self._checkpoint()
                if not retry:
                    break
        return False

    def _checkpoint(self) -> None:
        """Move the WAL into the database so that the next commit reuses the WAL from its start."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_disk_full(exc):
                raise

    def _stored_counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def _bump(self, name: str, by: int) -> int:
        """Add ``by`` to a counter in memory; it is written with the next commit."""
        if name not in self._counters:
            self._counters[name] = self._stored_counter(name)
        self._counters[name] += by
        self._dirty.add(name)
        return self._counters[name]

    # --- the queue -------------------------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Append a message; return its id, or ``DROPPED`` when the bound or a full disk discarded it."""
        now = time.time()
        payload = bytes(payload)
        with self._lock:
            self._put_since_check += len(payload)
            self._check_disk()
            if self._disk_full:
                self._leave_disk_full_if_room()
            if self._disk_full and not self._room_while_full(len(payload)):
                self._drop_for_disk()
                return DROPPED
            overflow = self._count - len(self._acked) + 1 - self.max_messages
            if overflow > 0 and self.on_full == "drop-newest":
                self._record_drops(1)
                return DROPPED
            victims = self._oldest(overflow) if overflow > 0 else []
            ids: list[int] = []

            def insert() -> None:
                ids.clear()
                self._delete(victims)
                cur = self._db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?)",
                    (topic, payload, int(qos), int(bool(retain)), now))
                ids.append(cur.lastrowid)

            if not self._write(insert, retry=False):
                self._drop_for_disk()
                return DROPPED
            self._dropped_oldest(victims)
            self._count += 1
            return ids[0]

    def _oldest(self, n: int) -> list[int]:
        """The ids of the ``n`` oldest messages not acked yet."""
        rows = self._db.execute("SELECT id FROM messages ORDER BY id LIMIT ?", (n + len(self._acked),))
        return [i for (i,) in rows if i not in self._acked][:n]

    def _delete(self, ids: list[int]) -> None:
        if ids:
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])

    def _dropped_oldest(self, victims: list[int]) -> None:
        """After the commit that deleted ``victims`` for the bound or for room: count and report them."""
        if victims:
            self._count -= len(victims)
            self._record_drops(len(victims))

    def _room_while_full(self, size: int) -> bool:
        """With the disk full, may a message of ``size`` bytes be written into pages acks freed?

        ``drop-oldest`` drops the oldest messages until enough pages are free (deletes need no new space).
        """
        needed = size // self._page_size + 3
        for _ in range(64):
            if self._free_pages() >= needed:
                return True
            victims = self._oldest(16) if self.on_full == "drop-oldest" else []
            if not victims or not self._write(lambda: self._delete(victims)):
                return False
            self._dropped_oldest(victims)
        return False

    def _free_pages(self) -> int:
        return self._db.execute("PRAGMA freelist_count").fetchone()[0]

    def _drop_for_disk(self) -> None:
        """Count a new message the full disk had no room for; report the count at most once a minute."""
        self._bump(_DROPPED_COUNTER, 1)
        self._disk_drops += 1
        now = time.monotonic()
        if now - self._last_disk_warning >= DISK_WARNING_INTERVAL_S:
            self._last_disk_warning = now
            self._flush_disk_drops()

    def _flush_disk_drops(self) -> None:
        if self._disk_drops:
            log.error("spool %s: the disk was full: dropped %d new message(s) since the last report, %d dropped "
                      "in total", self.path, self._disk_drops, self._counters[_DROPPED_COUNTER])
            self._disk_drops = 0

    def _record_drops(self, n: int) -> None:
        self._bump(_DROPPED_COUNTER, n)
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
                        self.dropped)
            self._unreported_drops = 0

    def peek(self, limit: int) -> list[SpoolItem]:
        """Return up to ``limit`` un-acked messages, oldest first, without removing them."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, qos, retain, created_at FROM messages "
                                    "ORDER BY id LIMIT ?", (limit + len(self._acked),)).fetchall()
            acked = set(self._acked)
        return [SpoolItem(i, t, bytes(p), q, bool(r), c) for i, t, p, q, r, c in rows if i not in acked][:limit]

    def ack(self, ids: Iterable[int]) -> None:
        """Remove delivered messages; unknown ids (already acked or dropped) are ignored.

        Never fails for a full disk: a delete that cannot be written yet is remembered (this process does not
        return the message again) and written with a later commit.
        """
        wanted = list(ids)
        if not wanted:
            return
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                self._acked.update(i for (i,) in self._db.execute(
                    f"SELECT id FROM messages WHERE id IN ({marks})", chunk))
            if self._write(lambda: None) and self._disk_full:  # the transaction writes the pending deletes
                self._checkpoint()  # so that the next commits reuse the WAL instead of growing it

    def next_sequence(self, name: str = "verdict") -> int:
        """Return the next value of a named counter: strictly increasing within this ``epoch``.

        Kept in memory (no disk space needed) and written with the next commit, so a restart continues
        above every number of a spooled message. A restart may repeat a number (after a power loss rolled
        commits back, or for one never spooled), always in a new epoch: identify messages by ``(epoch, seq)``.
        """
        with self._lock:
            return self._bump(_SEQUENCE_PREFIX + name, 1)

    @property
    def dropped(self) -> int:
        """Messages discarded by the bound or a full disk over the spool file's lifetime (persisted)."""
        return self._counters[_DROPPED_COUNTER]

    @property
    def low_disk(self) -> bool:
        """The file system is below ``warn_free_bytes`` free, or full (new messages may be dropped)."""
        with self._lock:
            return self._disk_full or self._check_disk() < self.warn_free_bytes

    def stats(self) -> dict[str, Any]:
        """``queued``, ``dropped``, ``disk_free_bytes``, ``low_disk``, ``disk_full`` and ``epoch``."""
        with self._lock:
            free = self._check_disk()
            return {"queued": self._count - len(self._acked), "dropped": self.dropped,
                    "disk_free_bytes": None if math.isinf(free) else int(free),
                    "low_disk": self._disk_full or free < self.warn_free_bytes, "disk_full": self._disk_full,
                    "epoch": self.epoch}

    def __len__(self) -> int:
        return self._count - len(self._acked)

    def flush(self) -> None:
        """Write what a full disk held back (acks, counters) if it can now, and report pending drops."""
        with self._lock:
            if self._closed:
                return
            self._flush_drop_warning()
            self._flush_disk_drops()
            if self._dirty or self._acked:
                self._write(lambda: None)

    def close(self) -> None:
        """`flush`, then close; a second call does nothing."""
        self.flush()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()
