"""One process per state folder: an exclusive ``flock`` on a lock file inside it, held for the life of the process.

Why: two agents on one state folder (``edge-agent run`` by hand while the systemd service runs) share the MQTT
client id, so the broker keeps kicking one out; both judge the same frames and write the same spool, detector
pointer and cursor. The second one must refuse to start, and say who holds the folder and what to do.

Why ``flock`` and not a pid file alone: the kernel drops the lock when the holder dies, even by SIGKILL or a power
cut, so there is never a stale lock to clean up. The file is never deleted (deleting it would let two processes
lock two different files); its content, the holder's pid and command, is only for the message. The descriptor is
close-on-exec, so a program the agent starts does not keep the folder locked after the agent exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

LOCK_NAME = "edge-agent.lock"


class StateLocked(RuntimeError):
    """Another live process holds the state folder."""


def _default_command() -> str:
    return " ".join(["edge-agent", *sys.argv[1:]])[:200]


class StateLock:
    """``StateLock(state_dir, "edge-agent run").acquire()``, or ``with StateLock(state_dir):``.

    Held until `release` or the process ends: dropping the object does not release it.
    """

    def __init__(self, state_dir: str | Path, command: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self.command = command or _default_command()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> StateLock:
        """Take the folder or raise `StateLocked` at once (never waits) naming the holder's pid."""
        if self._fd is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateLocked(self._message()) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            holder = json.dumps({"pid": os.getpid(), "command": self.command}).encode() + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        except OSError:
            pass  # the lock is what counts; the content only improves another instance's message
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # before unlocking: a stale pid must not be named once the folder is free
        except OSError:
            pass
        os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> dict | None:
        """The holder's pid and command; it may still be writing them just after taking the lock, so retry."""
        for _ in range(10):
            try:
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
                    return holder
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return None

    def _message(self) -> str:
        holder = self._holder()
        if holder is None:
            who = "another process"
        else:
            who = f"process {holder['pid']}" + (f" ({holder['command']})" if holder.get("command") else "")
        return (f"state folder {self.state_dir} is in use by {who}; stop it (systemctl stop edge-agent, "
                f"or edge-agent@<name> for one of several cameras) or give another --state-dir")
