"""The spool keeps every message in order until acked: across close/reopen, a SIGKILL and a corrupt file."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.deliver.spool import DROPPED, Spool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


def payloads(spool: Spool) -> list[bytes]:
    return [item.payload for item in spool.peek(1_000_000)]


def test_order_ack_and_fields(spool_path: Path) -> None:
    spool = Spool(spool_path)
    ids = [spool.put(f"t/{i}", b"m%d" % i, qos=i % 2, retain=i == 3) for i in range(5)]
    assert ids == sorted(ids) and len(spool) == 5
    items = spool.peek(3)
    assert [i.id for i in items] == ids[:3]
    assert [(i.topic, i.payload, i.qos) for i in items] == [("t/0", b"m0", 0), ("t/1", b"m1", 1), ("t/2", b"m2", 0)]
    assert spool.peek(5)[3].retain is True and items[0].retain is False
    assert items[0].created_at > 0
    spool.ack(ids[:2])
    spool.ack(ids[:1])  # acking twice is harmless
    assert len(spool) == 3 and payloads(spool) == [b"m2", b"m3", b"m4"]
    spool.close()


def test_messages_counters_and_sequence_survive_reopen(spool_path: Path) -> None:
    spool = Spool(spool_path, max_messages=3)
    for i in range(4):
        spool.put("t", b"%d" % i)
    assert [spool.next_sequence() for _ in range(3)] == [1, 2, 3]
    assert spool.next_sequence("alert") == 1
    spool.close()

    spool = Spool(spool_path, max_messages=3)
    assert payloads(spool) == [b"1", b"2", b"3"] and len(spool) == 3
    assert spool.dropped == 1
    assert spool.next_sequence() == 4 and spool.next_sequence("alert") == 2
    spool.close()


# Puts messages forever and prints each id once put() returned; the test SIGKILLs it mid-stream.
WRITER = """
import sys
from edge_agent.deliver.spool import Spool
spool = Spool(sys.argv[1])
i = 0
while True:
    print(spool.put("t", b"%d" % i), flush=True)
    i += 1
"""


def test_nothing_put_is_lost_when_the_process_is_killed(spool_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(spool_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        confirmed = [int(proc.stdout.readline()) for _ in range(300)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    spool = Spool(spool_path)
    ids = [item.id for item in spool.peek(1_000_000)]
    assert ids[: len(confirmed)] == confirmed  # every confirmed put is there, in order, maybe a few more
    assert payloads(spool) == [b"%d" % i for i in range(len(ids))]
    spool.close()


def test_drop_oldest_keeps_the_newest_and_counts(spool_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_path, max_messages=3, on_full="drop-oldest")
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.spool"):
        ids = [spool.put("t", b"%d" % i) for i in range(5)]
    assert DROPPED not in ids
    assert payloads(spool) == [b"2", b"3", b"4"] and len(spool) == 3 and spool.dropped == 2
    assert "full" in caplog.text
    spool.close()


def test_drop_newest_keeps_the_oldest_and_counts(spool_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(spool_path, max_messages=3, on_full="drop-newest")
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.spool"):
        ids = [spool.put("t", b"%d" % i) for i in range(5)]
    assert ids[3:] == [DROPPED, DROPPED]
    assert payloads(spool) == [b"0", b"1", b"2"] and spool.dropped == 2
    assert "full" in caplog.text
    spool.close()


@pytest.mark.parametrize("on_full", ["drop-oldest", "drop-newest"])
def test_flood_of_drops_logs_a_few_lines_not_one_per_message(spool_path: Path, caplog: pytest.LogCaptureFixture,
                                                           on_full: str) -> None:
    spool = Spool(spool_path, max_messages=1, on_full=on_full)
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.spool"):
        for i in range(500):
            spool.put("t", b"x")
        spool.close()  # reports the drops not yet reported
    assert spool.dropped == 499
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 2
    assert "499 in total" in warnings[-1].getMessage()


@pytest.mark.parametrize("kwargs", [{"on_full": "block"}, {"max_messages": 0}])
def test_invalid_arguments_are_rejected(spool_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Spool(spool_path, **kwargs)


def test_concurrent_put_and_ack_keep_order(spool_path: Path) -> None:
    spool = Spool(spool_path)
    n = 500
    received: list[bytes] = []

    def consume() -> None:
        while len(received) < n:
            items = spool.peek(50)
            received.extend(i.payload for i in items)
            spool.ack(i.id for i in items)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    for i in range(n):
        spool.put("t", b"%d" % i)
    consumer.join(30)
    assert not consumer.is_alive()
    assert received == [b"%d" % i for i in range(n)] and len(spool) == 0
    spool.close()


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an SQLite database\n" * 200)


def _damage_pages(path: Path) -> None:
    spool = Spool(path)
    for i in range(500):
        spool.put("t", os.urandom(1000))
    spool.close()  # the last connection checkpoints the WAL into the main file
    with open(path, "r+b") as f:
        f.seek(4096 * 4)
        f.write(b"\xff" * 4096 * 20)


@pytest.mark.parametrize("damage", [_write_garbage, _damage_pages], ids=["not-a-database", "damaged-pages"])
def test_corrupt_file_is_moved_aside(spool_path: Path, caplog: pytest.LogCaptureFixture, damage) -> None:
    spool_path.parent.mkdir(parents=True)
    damage(spool_path)
    bad = spool_path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="edge_agent.deliver.spool"):
        spool = Spool(spool_path)
    assert len(spool) == 0 and spool.next_sequence() == 1
    spool.put("t", b"fresh")
    assert payloads(spool) == [b"fresh"]
    spool.close()
    aside = list(spool_path.parent.glob("spool.db.corrupt-*"))
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [bad]
    assert "corrupt" in caplog.text and caplog.records[-1].levelno == logging.ERROR
