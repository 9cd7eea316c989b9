"""Every fault of the reliability issue in one go, against a real Mosquitto and the agent as a real process.

    python -m bench.faults [--frames N] [--data DIR] [--only broker,kill,power,disk,files,commands,instance]

One broker (``mosquitto`` on a free loopback port, persistence on) serves every row. Each row gets a fresh state
folder, a fresh watched folder and its own device id, and starts its own agent
(``python -m edge_agent.cli --config CFG run``); the detector is fitted once, with
``python -m edge_agent.cli --config CFG fit --images <good folder>``, and its ``detectors/`` folder is copied into
each row's state folder. Frames are real images (MVTec AD bottle, or the elpv cells) resized to 96 px, written
under unique names into a staging folder and renamed into the watched folder at a steady pace.

A subscriber (paho, its own network thread, a persistent session so that it keeps its subscription and its
queued QoS 1 messages across a broker restart) records every verdict. Per row:

- ``frames``: good frames dropped in; ``delivered``: distinct frames with at least one verdict;
- ``dropped``: ``spool_dropped`` from the agent's state at the end (the ``status`` command's reply, which is the
  same payload as the retained ``state`` topic), messages the spool discarded and counted;
- ``lost``: frames without a verdict beyond what the spool counted as dropped;
- ``dup``: verdicts delivered again with an ``(epoch, seq)`` already seen (a subscriber drops them by that key);
  ``rejudged``: a frame judged again after a crash, under a new ``(epoch, seq)`` but the same ``frame`` and
  ``captured_at`` (a subscriber drops it by those);
- ``service``: ``running`` when the agent is alive at the end and answers ``status``, else ``exited <rc>``.

The script exits 1 when any row loses a frame or ends with the service not running.
"""

from __future__ import annotations

from bench.common import emit  # first: applies the agent's thread limits before numpy loads

import argparse  # noqa: E402
import getpass  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.capture.images import list_images, read_image  # noqa: E402
from tests.mqtt_broker import free_port, stop_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "faults"
FRAME_PX = 96
FEED_FPS = 20.0
ROWS = ("broker", "kill", "power", "disk", "files", "commands", "instance")
#: How long a row waits for the last verdicts after its last frame.
DRAIN_S = 45.0


# ---- the broker ---------------------------------------------------------------------------------------------

class Broker:
    """One mosquitto process on a fixed loopback port; stop() (SIGTERM) saves its persistence file."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", "allow_anonymous true",
            "persistence true", f"persistence_location {workdir}/", "max_queued_messages 1000000",
            f"log_dest file {self.log_path}", "log_type error", "log_type warning", "log_type notice",
        ]) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


# ---- the subscriber -----------------------------------------------------------------------------------------

class Recorder:
    """Records every message under ``<prefix>/<device>/#`` (paho's own network thread) and sends commands."""

    def __init__(self, port: int, device: str):
        self.base = f"{PREFIX}/{device}"
        self.verdicts: list[dict] = []
        self.results: dict[str, list[dict]] = {}
        self.source_status: list[dict] = []
        self.state: dict | None = None
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"faults-sub-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.base}/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the subscriber could not subscribe")

    def _on_message(self, client, userdata, message) -> None:
        sub = message.topic[len(self.base) + 1:]
        try:
            payload = json.loads(message.payload) if sub != "alert/image" else None
        except ValueError:
            payload = None
        with self._lock:
            if sub == "verdict":
                self.verdicts.append(payload)
            elif sub == "state":
                self.state = payload
            elif sub == "source/status":
                self.source_status.append(payload)
            elif sub.startswith("cmd/") and sub.endswith("/result"):
                self.results.setdefault(sub[4:-7], []).append(payload)

    def frames(self) -> set[str]:
        with self._lock:
            return {v["frame"] for v in self.verdicts}

    def counts(self) -> tuple[int, int]:
        """(verdicts delivered again under an (epoch, seq) already seen, frames judged again under a new one)."""
        with self._lock:
            keys = [(v["epoch"], v["seq"]) for v in self.verdicts]
            per_frame: dict[str, set] = {}
            for v in self.verdicts:
                per_frame.setdefault(v["frame"], set()).add((v["epoch"], v["seq"]))
        return len(keys) - len(set(keys)), sum(len(k) - 1 for k in per_frame.values())

    def command(self, name: str, payload: bytes | dict, timeout: float = 15.0,
                match: Callable[[dict], bool] | None = None) -> dict | None:
        """Send a command; return its first reply that ``match`` accepts (default: any new reply)."""
        with self._lock:
            before = len(self.results.get(name, []))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(f"{self.base}/cmd/{name}", data, qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                new = self.results.get(name, [])[before:]
            for reply in new:
                if match is None or match(reply):
                    return reply
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- frames -------------------------------------------------------------------------------------------------

def png(rgb) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def small(path: Path):
    return cv2.resize(read_image(path), (FRAME_PX, FRAME_PX), interpolation=cv2.INTER_AREA)


def prepare_images(data: Path | None, work: Path, n_pool: int = 60) -> tuple[Path, list[bytes], bytes, str]:
    """(a folder of 10 good images for the fit, a pool of good frames as PNG bytes, a defect's PNG, the set's name)."""
    if data is None or not (data / "train" / "good").is_dir():
        from edge_agent.offline.datasets import write_elpv

        data, name = write_elpv(work / "elpv", "mono", n_train=60), "elpv mono cells"
        defects = list_images(data / "test" / "defective")
    else:
        name = data.name
        defects = [p for d in sorted((data / "test").iterdir()) if d.name != "good" for p in list_images(d)]
    train, test = list_images(data / "train" / "good"), list_images(data / "test" / "good")
    good = work / "good"
    good.mkdir(parents=True)
    for i, p in enumerate(train[:10]):
        (good / f"good{i:02d}.png").write_bytes(png(small(p)))
    pool = [png(small(p)) for p in (test + train[10:])[:n_pool]]
    return good, pool, png(small(defects[0])), name


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A small real PNG whose IHDR is patched to declare ``width`` x ``height`` (CRC fixed): the agent must refuse
    it from the header, without decoding (decoded, 20000 x 20000 x 3 would take 1.2 GB)."""
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ---- one row: an agent, its folders, its frames -------------------------------------------------------------

@dataclass
class Result:
    fault: str
    frames: int = 0
    delivered: int = 0
    dropped: int = 0
    lost: int = 0
    dup: int = 0
    rejudged: int = 0
    service: str = "?"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


class Row:
    """A fresh state folder, watched folder and device id; the agent as a subprocess; the frames fed to it."""

    def __init__(self, name: str, work: Path, broker: Broker, template: Path, good: Path, pool: list[bytes],
                 state_dir: Path | None = None):
        self.name, self.broker, self.pool = name, broker, pool
        self.dir = work / name
        self.dir.mkdir(parents=True)
        self.state = state_dir or self.dir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        shutil.copytree(template / "detectors", self.state / "detectors")
        self.watch, self.staging = self.dir / "watch", self.dir / "staging"
        self.watch.mkdir()
        self.staging.mkdir()
        self.device = f"faults-{name}"
        self.config = self.dir / "config.toml"
        self.config.write_text(config_text(self.device, self.state, self.watch, good, broker.port))
        self.fed: list[str] = []
        self.agents: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.recorder = Recorder(broker.port, self.device)
        self._closed = False

    # the agent
    def start_agent(self) -> subprocess.Popen:
        log = self.dir / f"agent-{len(self.agents) + 1}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "--config", str(self.config), "run"],
                                    stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        self.agents.append(proc)
        self.logs.append(log)
        return proc

    @property
    def agent(self) -> subprocess.Popen:
        return self.agents[-1]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the agent published its state (it judges from then on)."""
        deadline = time.monotonic() + timeout
        proc = self.agent
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the agent exited {proc.returncode}:\n{self.log_tail()}")
            state = self.recorder.state
            if state and state.get("status") == "running" and state.get("updated_at", "") >= self._started_iso:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the agent did not publish its state within {timeout} s:\n{self.log_tail()}")

    def launch(self) -> subprocess.Popen:
        from edge_agent.deliver.messages import now_iso

        self._started_iso = now_iso()
        proc = self.start_agent()
        self.wait_ready()
        return proc

    def log_tail(self, n: int = 3000) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs)[-n:]

    # frames
    def drop(self, data: bytes, name: str | bytes) -> None:
        """Write under a unique name in the staging folder, then rename into the watched folder (atomic)."""
        raw = os.fsencode(name)
        tmp = os.fsencode(self.staging) + b"/" + raw
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, os.fsencode(self.watch) + b"/" + raw)

    def feed(self, n: int, at: dict[int, Callable[[], None]] | None = None, fps: float = FEED_FPS) -> None:
        """``n`` good frames at ``fps``; ``at[i]`` runs just before frame ``i`` (0-based, of this call)."""
        at = at or {}
        t0 = time.monotonic()
        for i in range(n):
            if i in at:
                at[i]()
                t0 = time.monotonic() - i / fps
            name = f"{len(self.fed):06d}.png"
            self.drop(self.pool[len(self.fed) % len(self.pool)], name)
            self.fed.append(name)
            pause = t0 + (i + 1) / fps - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    def drain(self, timeout: float = DRAIN_S) -> None:
        """Until every fed frame has a verdict, or nothing new came for a while (drops), or ``timeout``."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = len(self.recorder.frames() & set(self.fed))
            if got == len(self.fed):
                return
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 10:
                return
            time.sleep(0.1)

    def finish(self, result: Result) -> Result:
        """Fill in the counts and the service state; stop the agent (SIGTERM) and the subscriber."""
        proc = self.agent
        status = None
        if proc.poll() is None:
            reply = self.recorder.command("status", {"request_id": "final"}, timeout=15,
                                          match=lambda r: r.get("request_id") == "final")
            status = reply.get("result") if reply and reply.get("ok") else None
        state = status or self.recorder.state or {}
        alive = proc.poll() is None
        result.service = ("running" if status else "running, no status reply") if alive else f"exited {proc.returncode}"
        fed = set(self.fed)
        delivered = self.recorder.frames() & fed
        result.frames, result.delivered = len(fed), len(delivered)
        result.dropped = int(state.get("spool_dropped") or 0)
        result.lost = max(0, len(fed) - len(delivered) - result.dropped)
        result.dup, result.rejudged = self.recorder.counts()
        result.extra["missing"] = sorted(fed - delivered)[:20]
        result.ok = result.ok and result.lost == 0 and alive and status is not None
        self.close()
        if not result.ok:
            result.extra["agent_log_tail"] = self.log_tail()
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.agents:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.recorder.close()


def config_text(device: str, state: Path, watch: Path, good: Path, port: int) -> str:
    return f"""[device]
id = "{device}"
state_dir = "{state}"
[model]
delegate = "cpu"
threads = 2
[source]
kind = "folder"
path = "{watch}"
watch = true
reopen_min_s = 0.1
reopen_max_s = 1.0
[trigger]
max_fps = 100
[detector]
name = "mahalanobis"
[augmentation]
factor = 2
[retrain]
folders = ["{good}"]
[mqtt]
host = "127.0.0.1"
port = {port}
topic_prefix = "{PREFIX}"
reconnect_min_s = 0.05
reconnect_max_s = 0.5
"""


# ---- the faults ---------------------------------------------------------------------------------------------

def row_broker(row: Row, n: int) -> Result:
    """The broker stops for 5 s at a third of the stream, then starts again on the same port."""
    result = Result("broker gone 5 s")
    row.launch()

    def outage() -> None:
        row.broker.stop()
        row.feed(int(5 * FEED_FPS))  # frames keep coming while it is gone
        row.broker.start()

    outer = n - int(5 * FEED_FPS)
    row.feed(outer, at={outer // 3: outage})
    row.drain()
    return row.finish(result)


def row_kill(row: Row, n: int, power_cut: bool = False) -> Result:
    """SIGKILL at half the stream; frames keep arriving for 1 s; the agent is started again.
    With ``power_cut``, the last 20% of the spool's WAL is cut off before the restart (commits not yet on disk)."""
    result = Result("power cut (SIGKILL, WAL tail -20%)" if power_cut else "SIGKILL + restart")
    row.launch()

    def crash() -> None:
        row.agent.send_signal(signal.SIGKILL)
        row.agent.wait(10)
        row.feed(int(FEED_FPS))
        if power_cut:
            wal = row.state / "spool.sqlite3-wal"
            size = wal.stat().st_size if wal.exists() else 0
            if size:
                os.truncate(wal, size - size // 5)
            result.extra["wal_bytes"] = f"{size} -> {size - size // 5}"
        row.launch()

    outer = n - int(FEED_FPS)
    row.feed(outer, at={outer // 2: crash})
    row.drain()
    return row.finish(result)


def row_power(row: Row, n: int) -> Result:
    return row_kill(row, n, power_cut=True)


def mount_tmpfs(path: Path, size: str = "3m") -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True, text=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def row_disk(work: Path, broker: Broker, template: Path, good: Path, pool: list[bytes], n: int,
             size_mb: int = 3) -> Result:
    """The state folder on a small tmpfs (3 MB, the issue's device). Phase A: broker up, the disk has room.
    Phase B: broker stopped and a filler file leaves 64 KiB free; frames keep flowing until the disk is full.
    Phase C: filler deleted, broker back, more frames.

    Drops are expected in phase B only, and counted, not lost. Every frame of phases A and C must get its
    verdict: a verdict dropped while the disk has room fails the row even though the spool counted it."""
    result = Result(f"disk full ({size_mb} MB tmpfs)")
    mnt = work / "disk-state"
    mount_tmpfs(mnt, f"{size_mb}m")
    row = None
    try:
        row = Row("disk", work, broker, template, good, pool, state_dir=mnt)
        row.launch()
        phase = n // 4
        row.feed(phase)
        row.drain(timeout=15)
        a = len(row.recorder.frames() & set(row.fed))
        result.extra["A broker up, disk with room"] = f"{a}/{phase} delivered, {free_bytes(mnt) // 1024} KiB free"
        broker.stop()
        filler = mnt / "filler"
        room = free_bytes(mnt) - 64 * 1024
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * max(0, room))
            except OSError:
                pass
        n_b = n - 2 * phase
        row.feed(n_b)
        time.sleep(1)
        result.extra["B broker down, disk filling"] = f"{n_b} frames, {free_bytes(mnt) // 1024} KiB free at the end"
        filler.unlink()
        broker.start()
        fed_before = len(row.fed)
        row.feed(phase)
        row.drain(timeout=30)
        got = row.recorder.frames()
        b = len(got & set(row.fed[phase:fed_before]))
        c = len(got & set(row.fed[fed_before:]))
        result.extra["B frames delivered"] = f"{b}/{n_b}"
        result.extra["C broker back, space freed"] = f"{c}/{phase} delivered, {free_bytes(mnt) // 1024} KiB free"
        if a < phase or c < phase:
            result.ok = False
            spool_lines = [line.split(": ", 1)[-1] for line in row.log_tail(100_000).splitlines()
                           if "edge_agent.deliver.spool" in line and ("ERROR" in line or "WARNING" in line)]
            result.note = (f"verdicts dropped while the disk had room: phase A {a}/{phase}, phase C {c}/{phase} "
                           f"delivered (counted in spool_dropped, so not in lost). Spool log: "
                           + " | ".join(spool_lines[:3]))
        return row.finish(result)
    finally:
        if row is not None:
            row.close()
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def row_files(row: Row, n: int, defect_png: bytes) -> Result:
    """Good frames around three hostile files: a name that is not UTF-8, a 20000 x 20000 PNG (header patched),
    a 4000 x 2 strip. Good frames must all get verdicts; the hostile files are listed with what happened."""
    result = Result("hostile files")
    row.launch()
    defect = cv2.cvtColor(cv2.imdecode(np.frombuffer(defect_png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    strip = png(cv2.resize(defect, (4000, 2), interpolation=cv2.INTER_AREA))
    hostile = {"not UTF-8 name": (b"bad\xff\xfe.png", row.pool[0]), "20000x20000 PNG": ("bomb.png", bomb_png()),
               "4000x2 strip": ("strip.png", strip)}
    names: dict[str, str] = {}

    def drop_hostile() -> None:
        for what, (name, data) in hostile.items():
            full = os.fsencode(f"{len(row.fed):06d}-") + os.fsencode(name)
            row.drop(data, full)
            names[what] = full.decode("utf-8", "backslashreplace")

    row.feed(n, at={n // 2: drop_hostile})
    row.drain()
    time.sleep(1)
    frames = row.recorder.frames()
    errors = [s.get("error", "") for s in row.recorder.source_status if s.get("status") == "failed"]
    outcome = {}
    for what, shown in names.items():
        if shown in frames:
            outcome[what] = "verdict"
        else:
            named = [e for e in errors if shown.split("-", 1)[1].split(".")[0] in e]
            outcome[what] = f"skipped: {named[0][:110]}" if named else "no verdict, no source error"
    result.extra["hostile"] = outcome
    return row.finish(result)


def row_commands(row: Row, n: int, good: Path) -> Result:
    """Hostile commands while frames flow: each must be refused; the frames keep getting verdicts."""
    result = Result("hostile commands")
    row.launch()
    outside = row.dir / "outside"
    outside.mkdir()
    for p in list(good.iterdir())[:3]:
        shutil.copy(p, outside / p.name)
    commands = [
        ("retrain outside [retrain] folders", "retrain", {"folder": str(outside), "request_id": "c1"}),
        ("threshold 1e308", "threshold", {"value": 1e308, "request_id": "c2"}),
        ("n_images 100000000", "retrain", {"n_images": 100_000_000, "request_id": "c3"}),
        ("16 MB request_id", "status", b'{"request_id": "' + b"x" * (16 * 2**20) + b'"}'),
    ]
    replies: dict[str, str] = {}

    def send_all() -> None:
        def run() -> None:
            for what, name, payload in commands:
                reply = row.recorder.command(name, payload, timeout=20)
                if reply is None:
                    replies[what] = "NO REPLY"
                elif reply.get("ok"):
                    replies[what] = f"ACCEPTED: {json.dumps(reply)[:120]}"
                else:
                    replies[what] = f"refused: {str(reply.get('error'))[:110]}"
        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)

    threads: list[threading.Thread] = []
    row.feed(n, at={n // 4: send_all})
    for t in threads:
        t.join(90)
    row.drain()
    result.extra["replies"] = replies
    if len(replies) != len(commands) or any(not r.startswith("refused") for r in replies.values()):
        result.ok = False
        result.note = "a hostile command was not refused"
    return row.finish(result)


def row_instance(row: Row, n: int) -> Result:
    """A second ``edge-agent run`` on the same state folder must exit 1 naming the first one's pid."""
    result = Result("second instance")
    first = row.launch()
    outcome: dict[str, Any] = {}

    def second() -> None:
        proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "--config", str(row.config), "run"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        outcome["rc"] = proc.returncode
        outcome["stderr"] = proc.stderr.strip().splitlines()[-1][:160] if proc.stderr.strip() else ""

    row.feed(n, at={n // 3: second})
    row.drain()
    result.extra["second instance"] = outcome
    if outcome.get("rc") != 1 or str(first.pid) not in outcome.get("stderr", ""):
        result.ok = False
        result.note = f"second instance: rc {outcome.get('rc')}, pid {first.pid} not named"
    return row.finish(result)


# ---- main ---------------------------------------------------------------------------------------------------

def fit_template(work: Path, broker: Broker, good: Path) -> tuple[Path, float]:
    template = work / "template"
    template.mkdir()
    cfg = work / "template.toml"
    cfg.write_text(config_text("faults-fit", template / "state", template / "watch", good, broker.port))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edge_agent.cli", "--config", str(cfg), "fit", "--images", str(good)],
                   check=True, capture_output=True, timeout=600, cwd=ROOT)
    return template / "state", time.perf_counter() - t0


def print_table(results: list[Result]) -> None:
    head = ("fault", "frames", "delivered", "dropped", "lost", "dup (epoch,seq)", "rejudged", "service")
    rows = [(r.fault, r.frames, r.delivered, r.dropped, r.lost, r.dup, r.rejudged, r.service) for r in results]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head) - 1)) + "|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    for r in results:
        for k, v in r.extra.items():
            if k == "agent_log_tail":
                continue
            if isinstance(v, dict):
                for kk, vv in v.items():
                    print(f"  {r.fault}: {k}: {kk}: {vv}")
            elif v not in ([], None, ""):
                print(f"  {r.fault}: {k}: {v}")
        if not r.ok:
            print(f"  {r.fault}: FAILED {r.note}")
            tail = r.extra.get("agent_log_tail")
            if tail:
                print("    agent log (tail):\n" + "\n".join("    " + line for line in tail.splitlines()[-25:]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=200, help="good frames per row")
    p.add_argument("--data", type=Path,
                   default=Path(os.environ.get("EDGE_DATA_DIR", ROOT.parent / "shared" / "data")) / "mvtec_ad_bottle",
                   help="a data set in MVTec layout (default: MVTec AD bottle; the elpv cells when absent)")
    p.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows to run, from {','.join(ROWS)}")
    p.add_argument("--disk-mb", type=int, default=3, help="size of the disk row's tmpfs in MB (the issue's: 3)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, state folders)")
    args = p.parse_args()
    only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(only) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {','.join(ROWS)}")
    if args.frames < 20:
        p.error("--frames must be at least 20")
    if "disk" in only and os.geteuid() != 0:
        p.error("the disk row mounts a tmpfs and needs root; leave it out with --only")
    if "broker" in only and args.frames < int(5 * FEED_FPS) + 10:
        p.error(f"the broker row needs --frames of at least {int(5 * FEED_FPS) + 10} (5 s of frames at "
                f"{FEED_FPS:g} fps go in during the outage)")

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edge-faults-"))
    broker = Broker(work / "mosquitto")
    broker.start()
    results: list[Result] = []
    try:
        good, pool, defect, set_name = prepare_images(args.data, work)
        template, fit_s = fit_template(work, broker, good)
        print(f"data: {set_name}, frames {FRAME_PX} px, {args.frames} good frames per row at {FEED_FPS:g} fps; "
              f"fit (edge-agent fit, 10 images) {fit_s:.1f} s; {os.cpu_count()} CPUs, {platform.machine()}",
              flush=True)
        for name in only:
            t0 = time.perf_counter()
            try:
                if name == "disk":
                    result = row_disk(work, broker, template, good, pool, args.frames, args.disk_mb)
                else:
                    if broker.proc is None:
                        broker.start()
                    row = Row(name, work, broker, template, good, pool)
                    try:
                        result = {"broker": lambda: row_broker(row, args.frames),
                                  "kill": lambda: row_kill(row, args.frames),
                                  "power": lambda: row_power(row, args.frames),
                                  "files": lambda: row_files(row, args.frames, defect),
                                  "commands": lambda: row_commands(row, args.frames, good),
                                  "instance": lambda: row_instance(row, args.frames)}[name]()
                    finally:
                        row.close()
            except Exception as exc:  # a row that could not even run is a failed row, not a crashed script
                result = Result(name, ok=False, service="?", note=f"{type(exc).__name__}: {exc}"[:3000])
            result.extra["seconds"] = round(time.perf_counter() - t0, 1)
            results.append(result)
            emit({"kind": "fault", "row": name, "fault": result.fault, "frames": result.frames,
                  "delivered": result.delivered, "dropped": result.dropped, "lost": result.lost, "dup": result.dup,
                  "rejudged": result.rejudged, "service": result.service, "ok": result.ok})
    finally:
        broker.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(results)
    failed = [r.fault for r in results if not r.ok]
    print(f"\n{len(results)} rows in {time.perf_counter() - t_start:.0f} s; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every row: lost 0, service running"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
