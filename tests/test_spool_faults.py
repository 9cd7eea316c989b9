"""The spool under faults: a full disk (a real 3 MB tmpfs) and a power cut that cuts the end off the WAL.

A full disk must never raise to the agent, must count what it cannot keep, must keep acking (so the backlog
drains) and must recover by itself; a power cut must never make two different messages share ``(epoch, seq)``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig
from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import DROPPED, Spool

ROOT = Path(__file__).resolve().parents[1]
RESERVE = 256 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs, as the state directory of the issue's device."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path, chunk: int = 4096) -> int:
    """Write ``path`` until the file system is full; return its size."""
    written = 0
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                written += f.write(os.urandom(chunk))
        except OSError:
            pass
    return written


def drain(spool: Spool, batch: int = 20) -> list[bytes]:
    """What the sender does: peek a window, ack it, until the spool is empty."""
    delivered: list[bytes] = []
    while len(spool):
        items = spool.peek(batch)
        assert items, "len() says there are messages but peek() returns none"
        delivered += [item.payload for item in items]
        spool.ack(item.id for item in items)
    return delivered


def verdict(seq: int) -> bytes:
    return b"%08d:" % seq + os.urandom(400).hex().encode()


@pytest.mark.parametrize("on_full", ["drop-newest", "drop-oldest"])
def test_full_disk_never_raises_counts_drops_drains_and_recovers(small_disk: Path, caplog: pytest.LogCaptureFixture,
                                                                 on_full: str) -> None:
    spool = Spool(small_disk / "spool.sqlite3", on_full=on_full, reserve_bytes=RESERVE,
                  warn_free_bytes=1024 * 1024)
    hog = small_disk / "other.log"  # something else on the device fills the disk too
    with open(hog, "wb") as f:
        f.write(os.urandom(1024 * 1024))
    accepted: list[bytes] = []
    seqs: list[int] = []
    n = 4000  # ~3.3 MB of payloads: far more than the disk
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.spool"):
        for _ in range(n):
            seqs.append(spool.next_sequence())
            payload = verdict(seqs[-1])
            if spool.put("verdict", payload) != DROPPED:
                accepted.append(payload)
    assert seqs == list(range(1, n + 1))  # numbering needs no disk space
    assert spool.stats()["disk_full"] and spool.low_disk and spool.stats()["disk_free_bytes"] < RESERVE
    assert not spool.reserve_path.exists()  # released for the acks
    if on_full == "drop-newest":
        assert spool.dropped == n - len(accepted) > 0
    else:
        assert spool.dropped > n - len(accepted) > 0  # some spooled ones made room for newer ones
    assert len(accepted) > 500
    disk_lines = [r for r in caplog.records if "disk" in r.getMessage()]
    assert 1 <= len(disk_lines) <= 3, [r.getMessage() for r in disk_lines]  # not one per drop
    assert any(r.levelno >= logging.WARNING and "left on its file system" in r.getMessage() for r in disk_lines)

    # Worse: something takes the space the reserve freed as well. Acks must still work (and not raise).
    fill(small_disk / "hog2")
    queued = len(spool)
    delivered = drain(spool)
    assert len(delivered) == queued and len(spool) == 0
    assert delivered == [p for p in accepted if p in set(delivered)]  # in order
    if on_full == "drop-newest":
        assert delivered == accepted
    else:
        assert delivered == accepted[-len(delivered):]  # the newest survived
    # With the disk still full, the sender keeps delivering: new messages go into the pages acks freed.
    for _ in range(5):
        batch = [verdict(spool.next_sequence()) for _ in range(30)]
        assert all(spool.put("verdict", p) != DROPPED for p in batch)
        assert drain(spool) == batch
    assert spool.stats()["disk_full"]

    # Space comes back: the reserve is made again and puts go on normally.
    (small_disk / "hog2").unlink()
    hog.unlink()
    spool._disk_checked = float("-inf")  # do not wait for the once-a-second disk check
    after = [verdict(spool.next_sequence()) for _ in range(200)]
    assert all(spool.put("verdict", p) != DROPPED for p in after)
    assert not spool.stats()["disk_full"] and spool.reserve_path.stat().st_size == RESERVE
    dropped = spool.dropped
    spool.close()

    spool = Spool(small_disk / "spool.sqlite3", on_full=on_full, reserve_bytes=RESERVE)
    assert [item.payload for item in spool.peek(1000)] == after and spool.dropped == dropped
    assert spool.next_sequence() == seqs[-1] + 150 + 200 + 1
    spool.close()


def test_a_spool_opened_on_a_full_disk_works(small_disk: Path) -> None:
    spool = Spool(small_disk / "spool.sqlite3", reserve_bytes=RESERVE)
    kept = [verdict(i) for i in range(100)]
    for p in kept:
        spool.put("verdict", p)
    spool.close()
    (small_disk / "spool.sqlite3.reserve").unlink()
    fill(small_disk / "hog")
    spool = Spool(small_disk / "spool.sqlite3", reserve_bytes=RESERVE)  # no room for a reserve: no exception
    assert spool.stats()["disk_full"]
    assert spool.put("verdict", b"x" * 5000) == DROPPED and spool.dropped == 1
    assert spool.next_sequence() == 1
    assert drain(spool) == kept
    spool.close()


def test_publisher_on_a_full_disk_keeps_publishing_and_delivers_the_backlog(small_disk: Path, tmp_path: Path) -> None:
    from tests.mqtt_broker import DEVICE, PREFIX, MosquittoBroker, Subscriber, require_mosquitto, wait_until

    require_mosquitto()
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    sub = Subscriber(broker)
    pub = Publisher(MqttConfig(host=broker.host, port=broker.port, topic_prefix=PREFIX, reconnect_min_s=0.05,
                               reconnect_max_s=0.5), DEVICE,
                    Spool(small_disk / "spool.sqlite3", on_full="drop-newest", reserve_bytes=RESERVE))
    try:
        # Not started: like a broker outage, every verdict only goes to the spool, until the disk is full.
        seqs = [pub.publish_verdict({"frame": i, "pad": os.urandom(400).hex()}) for i in range(3500)]
        stats = pub.stats()
        assert stats["dropped"] > 0 and stats["queued"] + stats["dropped"] == 3500
        assert seqs == list(range(1, 3501))
        pub.start()
        assert wait_until(lambda: len(pub.spool) == 0, 30)
        assert wait_until(lambda: len(sub.verdict_seqs()) == stats["queued"], 10)
        more = [pub.publish_verdict({"frame": i}) for i in range(50)]
        assert wait_until(lambda: sub.verdict_seqs()[-50:] == more, 10)
    finally:
        pub.stop(timeout=1)
        pub.spool.close()
        sub.close()
        broker.stop()


# Publishes verdicts through the Publisher (not started: they only go to the spool) and prints each one once
# publish_verdict returned; then waits to be killed, as a power cut would.
WRITER = """
import json, sys, time
from edge_agent.config import MqttConfig
from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import Spool
pub = Publisher(MqttConfig(), "cam", Spool(sys.argv[1]))
for i in range(int(sys.argv[2])):
    v = {"frame": f"{sys.argv[3]}-{i}"}
    pub.publish_verdict(v)
    print(json.dumps(v), flush=True)
print("done", flush=True)
time.sleep(60)
"""


def run_writer(path: Path, n: int, tag: str) -> list[dict]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n), tag], cwd=ROOT,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(n + 1)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert lines[-1] == "done\n"
    return [json.loads(line) for line in lines[:-1]]


def cut_wal_commits(wal: Path, n: int) -> int:
    """Cut the last ``n`` commits off a WAL (as a power loss with synchronous=NORMAL may); return how many."""
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commit_ends = []
    offset = 32
    while offset + 24 + page_size <= len(data) and data[offset + 8:offset + 16] == salts:
        if struct.unpack(">I", data[offset + 4:offset + 8])[0]:  # "size of the database after the commit"
            commit_ends.append(offset + 24 + page_size)
        offset += 24 + page_size
    n = min(n, len(commit_ends) - 1)
    assert n > 0, "nothing to cut: the WAL was just checkpointed"
    with open(wal, "r+b") as f:
        f.truncate(commit_ends[-n - 1])
    return n


def test_power_cut_never_reuses_epoch_and_seq(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    first = run_writer(path, 150, "a")
    assert cut_wal_commits(Path(f"{path}-wal"), 15) == 15
    second = run_writer(path, 50, "b")
    identity: dict[tuple, str] = {}
    for v in first + second:  # what a subscriber may have received, before and after the power cut
        key = (v.get("epoch"), v["seq"])
        assert identity.setdefault(key, v["frame"]) == v["frame"], f"{key} names two different verdicts"
    for run in (first, second):
        assert len({v["epoch"] for v in run}) == 1
        assert [v["seq"] for v in run] == sorted({v["seq"] for v in run})  # increasing within an epoch
    assert first[0]["epoch"] != second[0]["epoch"]
    spool = Spool(path)
    assert spool.epoch not in (first[0]["epoch"], second[0]["epoch"])
    spool.close()


def test_publish_verdict_sets_epoch_with_seq_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    pub = Publisher(MqttConfig(), "cam", spool)
    v: dict = {}
    assert pub.publish_verdict(v) == 1 and v == {"seq": 1, "epoch": spool.epoch}
    assert isinstance(spool.epoch, str) and len(spool.epoch) == 16
    numbered = {"seq": 7}  # numbered by another sink: not ours to label
    assert pub.publish_verdict(numbered) == 7 and numbered == {"seq": 7}
    spool.close()


def test_an_empty_spool_file_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spool.sqlite3"
    path.touch()
    with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.spool"):
        spool = Spool(path)
    assert spool.next_sequence() == 1
    assert any("0-byte" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    spool.close()


def test_a_small_state_partition_spools_normally_with_the_default_reserve(small_disk: Path) -> None:
    """The default reserve (8 MiB) does not fit on 3 MB: sized to the file system, it must not make the spool
    count itself full from the start (every verdict dropped with the disk nearly empty)."""
    spool = Spool(small_disk / "spool.sqlite3")
    try:
        for i in range(50):
            spool.put("t/verdict", b'{"i": %d}' % i)
        assert len(spool) == 50 and spool.dropped == 0 and not spool.stats()["disk_full"]
        assert 0 < spool.reserve_path.stat().st_size <= 3 * 2**20 // 8
    finally:
        spool.close()
