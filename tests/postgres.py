"""Debian's real PostgreSQL server for tests: ``initdb`` into a temporary folder, ``postgres`` on a free loopback port.

The collector's promises (an idempotent key, a commit before the acknowledgement, the index a query uses) are
PostgreSQL's behaviour, so the tests run the real server, not a stand-in. ``initdb`` refuses to run as root; as
root the server runs as ``nobody`` (through ``setpriv``) in a folder handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tests.mqtt_broker import free_port, stop_process

SUPERUSER = "postgres"


def server_binaries() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin``; fails (never skips) when Debian's server is missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    assert found, "PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does it)"
    return Path(found[-1]).parent


class PostgresServer:
    """One ``postgres`` process on 127.0.0.1 with trust authentication (a test's own throwaway cluster)."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.port = free_port()
        self.host = "127.0.0.1"
        # Not under pytest's tmp_path: that is private to root, and the server may run as nobody.
        self.folder = Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
            self._as_user = [shutil.which("setpriv") or "setpriv", f"--reuid={nobody.pw_uid}",
                             f"--regid={nobody.pw_gid}", "--clear-groups"]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Create the cluster the first time, then start the server (again, after `shut_down`, on the same data)."""
        if not self.data.exists():
            # --no-locale: the caller's LANG may name a locale this machine does not have, which initdb refuses.
            subprocess.run([*self._as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                            "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                           check=True, capture_output=True, timeout=120)
        with open(self.log_path, "ab") as log:
            # fsync off: a test's cluster need not survive a power cut, and the shared CI disk is slow.
            self._proc = subprocess.Popen(
                [*self._as_user, str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", self.host, "-k", str(self.folder), "-c", "fsync=off", "-c", "max_connections=50"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}:\n{self.log()}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections within {timeout} s:\n{self.log()}")

    def dsn(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def shut_down(self) -> None:
        """Stop the server and keep its data: a database outage that `start` ends."""
        if self._proc is not None:
            stop_process(self._proc, signal.SIGINT, 30)  # SIGINT: PostgreSQL's fast shutdown
        self._proc = None

    def stop(self) -> None:
        self.shut_down()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres_server: PostgresServer) -> str:
    """The DSN of an empty database of its own for each test."""
    return postgres_server.new_database()
