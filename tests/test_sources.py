"""Frame sources: a folder (plain, watched, looped), OpenCV on a real video file, the factory, and the reopening
wrapper with its backoff and status reports. The Pi camera has its own file (tests/test_picamera.py)."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import SourceConfig
from edge_agent.capture import (
    EndOfStream,
    Frame,
    FrameSource,
    ReopeningSource,
    SourceError,
)
from edge_agent.capture.factory import open_source
from edge_agent.capture.folder import FolderSource
from edge_agent.capture.opencv import OpenCVSource
from edge_agent.capture.picamera import PiCameraSource
from tests.conftest import write_clip

WAIT_S = 5.0  # upper bound for anything that waits on a thread


def rgb_image(r: int, g: int, b: int, h: int = 24, w: int = 32) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = r, g, b
    img[0, 0] = (255 - r, 255 - g, 255 - b)  # not flat, and an orientation mark
    return img


def write_png(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def call_with_timeout(fn, timeout: float = WAIT_S):
    """Run ``fn`` in a daemon thread; its result, its exception, or a test failure after ``timeout``."""
    out: queue.Queue = queue.Queue()

    def target():
        try:
            out.put(("ok", fn()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.put(("err", exc))

    threading.Thread(target=target, daemon=True).start()
    try:
        kind, value = out.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"call did not return within {timeout} s")
    if kind == "err":
        raise value
    return value


# ---- folder ------------------------------------------------------------------------------------------------

COLOURS = {"b.png": (200, 10, 10), "a.png": (10, 200, 10), "c.jpg": (10, 10, 200)}


@pytest.fixture
def frames_dir(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, colour in COLOURS.items():
        write_png(folder / name, rgb_image(*colour))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    return folder


def test_folder_yields_sorted_rgb_frames_then_ends(frames_dir):
    with FolderSource(frames_dir) as src:
        frames = [src.read() for _ in range(3)]
        with pytest.raises(EndOfStream):
            src.read()
        with pytest.raises(EndOfStream):  # and stays ended
            src.read()
    assert [f.name for f in frames] == ["a.png", "b.png", "c.jpg"]
    for f in frames:
        assert isinstance(f, Frame)
        assert f.image.dtype == np.uint8 and f.image.shape == (24, 32, 3)
        expected = np.array(COLOURS[f.name])
        # RGB order (a BGR frame would put the 200 in the wrong channel); JPEG is lossy, so a tolerance.
        assert np.abs(f.image[5:, 5:].reshape(-1, 3).mean(0) - expected).max() < 6
        assert abs(f.captured_at - time.time()) < 60


def test_folder_missing_raises_source_error(tmp_path):
    with pytest.raises(SourceError, match="image folder not found"):
        FolderSource(tmp_path / "absent").open()


def test_folder_removed_while_reading_raises_source_error(frames_dir):
    src = FolderSource(frames_dir)
    src.open()
    for _ in range(3):
        src.read()
    for p in frames_dir.iterdir():
        p.rmdir() if p.is_dir() else p.unlink()
    frames_dir.rmdir()
    with pytest.raises(SourceError, match="not found"):
        src.read()


def test_folder_loop_restarts(frames_dir):
    src = FolderSource(frames_dir, loop=True)
    src.open()
    names = [src.read().name for _ in range(7)]
    assert names == ["a.png", "b.png", "c.jpg", "a.png", "b.png", "c.jpg", "a.png"]


def test_folder_loop_on_an_empty_folder_ends(tmp_path):
    src = FolderSource(tmp_path, loop=True)
    src.open()
    with pytest.raises(EndOfStream):
        call_with_timeout(src.read)


def test_unreadable_file_is_named_and_skipped(frames_dir):
    (frames_dir / "b2.png").write_bytes(b"\x89PNG truncated")  # sorts between b.png and c.jpg
    src = FolderSource(frames_dir)
    src.open()
    assert src.read().name == "a.png"
    assert src.read().name == "b.png"
    with pytest.raises(SourceError, match=r"b2\.png"):
        src.read()
    assert src.read().name == "c.jpg"
    with pytest.raises(EndOfStream):
        src.read()


def test_open_source_builds_what_the_config_names(frames_dir):
    folder = open_source(SourceConfig(kind="folder", path=str(frames_dir), watch=True, loop=True))
    assert isinstance(folder, FolderSource) and folder.watch and folder.loop and folder.path == frames_dir
    cv = open_source(SourceConfig(kind="opencv", uri="2", width=640, height=480))
    assert isinstance(cv, OpenCVSource) and cv.uri == 2 and (cv.width, cv.height) == (640, 480)
    pi = open_source(SourceConfig(kind="picamera2", width=800, height=600))
    assert isinstance(pi, PiCameraSource) and pi.size == (800, 600)
    with pytest.raises(ValueError, match="unknown source kind"):
        open_source(SourceConfig(kind="usb"))


def read_until_frame(src: FrameSource, timeout: float = WAIT_S) -> tuple[Frame, int]:
    """Call ``read`` until it gives a frame (``None`` means not yet); the frame and how many ``None`` came first."""
    deadline = time.monotonic() + timeout
    nones = 0
    while time.monotonic() < deadline:
        frame = src.read()
        if frame is not None:
            return frame, nones
        nones += 1
    pytest.fail(f"no frame within {timeout} s")


def test_folder_watch_picks_up_a_file_added_later(frames_dir):
    src = FolderSource(frames_dir, watch=True, poll_s=0.02)
    src.open()
    assert [src.read().name for _ in range(3)] == ["a.png", "b.png", "c.jpg"]
    started = time.monotonic()
    assert src.read() is None  # nothing new yet: one poll interval, then None
    assert time.monotonic() - started >= 0.015

    def drop_later():
        time.sleep(0.15)
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb_image(1, 2, 250), cv2.COLOR_RGB2BGR))
        assert ok
        tmp = frames_dir / "late.part"  # not an image suffix: written, then renamed, as a careful PLC would
        tmp.write_bytes(png.tobytes())
        tmp.rename(frames_dir / "late.png")

    writer = threading.Thread(target=drop_later, daemon=True)
    writer.start()
    frame, nones = read_until_frame(src)
    writer.join(WAIT_S)
    assert frame.name == "late.png"
    assert nones >= 1  # it kept polling until the file came
    assert frame.image[5:, 5:, 2].mean() > 240


def test_folder_watch_never_repeats_a_seen_file(frames_dir):
    src = FolderSource(frames_dir, watch=True, poll_s=0.01)
    src.open()
    for _ in range(3):
        src.read()
    assert src.read() is None
    write_png(frames_dir / "0-new-but-sorts-first.png", rgb_image(5, 5, 5))
    assert read_until_frame(src)[0].name == "0-new-but-sorts-first.png"
    assert src.read() is None


def test_folder_watch_delivers_a_file_that_was_incomplete_when_first_seen(frames_dir):
    src = FolderSource(frames_dir, watch=True, poll_s=0.01)
    src.open()
    for _ in range(3):
        src.read()
    partial = frames_dir / "d.png"
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb_image(9, 9, 9), cv2.COLOR_RGB2BGR))
    assert ok
    partial.write_bytes(png.tobytes()[:20])  # the copy has only just begun
    try:
        src.read()
    except SourceError:
        pass  # reporting the unreadable file is fine
    partial.write_bytes(png.tobytes())  # the copy completes
    frames = []
    for _ in range(20):
        frame = src.read()
        if frame is not None:
            frames.append(frame.name)
    assert "d.png" in frames


# ---- OpenCV ------------------------------------------------------------------------------------------------

VIDEO_COLOURS = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20), (20, 220, 220)]


@pytest.fixture
def video_file(tmp_path) -> Path:
    frames = [cv2.cvtColor(rgb_image(*colour, h=48, w=64), cv2.COLOR_RGB2BGR) for colour in VIDEO_COLOURS]
    return write_clip(tmp_path / "clip.avi", frames)


def test_opencv_video_file_gives_rgb_frames_then_ends(video_file):
    src = OpenCVSource(str(video_file))
    with src:
        frames = [src.read() for _ in VIDEO_COLOURS]
        with pytest.raises(EndOfStream):
            src.read()
    assert [f.name for f in frames] == [f"opencv:{video_file}#{i}" for i in range(1, 6)]
    for frame, colour in zip(frames, VIDEO_COLOURS):
        assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
        mean = frame.image[8:, 8:].reshape(-1, 3).mean(0)
        assert np.abs(mean - np.array(colour)).max() < 20, (mean, colour)


def test_opencv_close_is_idempotent_and_read_after_close_fails(video_file):
    src = OpenCVSource(str(video_file))
    src.open()
    src.read()
    src.close()
    src.close()
    with pytest.raises(SourceError, match="is not open"):
        src.read()
    src.open()  # reopening a file starts it again
    assert src.read().image.shape == (48, 64, 3)
    src.close()


@pytest.mark.parametrize("uri", ["/nonexistent/clip.avi", "rtsp://127.0.0.1:1/none", "97"])
def test_opencv_bad_uri_raises_source_error(uri):
    src = OpenCVSource(uri)
    with pytest.raises(SourceError, match="cannot open"):
        src.open()
    with pytest.raises(SourceError):
        src.read()


class _UnpluggedCapture:
    """cv2.VideoCapture for a USB camera that opens and then is unplugged (no camera exists here)."""

    def __init__(self, uri, *args):
        self.uri = uri

    def isOpened(self):
        return True

    def set(self, *args):
        return True

    def read(self):
        return False, None

    def release(self):
        pass


def test_opencv_camera_by_index_that_stops_giving_frames_is_a_source_error(monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", _UnpluggedCapture)
    src = OpenCVSource("0")
    src.open()
    with pytest.raises(SourceError, match="unplugged"):
        src.read()


def test_opencv_camera_by_device_path_that_stops_giving_frames_is_a_source_error(monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", _UnpluggedCapture)
    src = OpenCVSource("/dev/video0")
    src.open()
    with pytest.raises(SourceError):
        src.read()


# ---- reopening ----------------------------------------------------------------------------------------------


class FlakySource(FrameSource):
    """A test double: fails to open ``open_failures`` times, then fails ``read_failures`` reads."""

    name = "flaky"

    def __init__(self, open_failures: int = 0, read_failures: int = 0, always_fail_read: bool = False):
        self.open_failures, self.read_failures, self.always_fail_read = open_failures, read_failures, always_fail_read
        self.opens = self.closes = self.reads = 0
        self.open_times: list[float] = []

    def open(self):
        self.open_times.append(time.monotonic())
        if self.open_failures > 0:
            self.open_failures -= 1
            raise SourceError("no camera")
        self.opens += 1

    def read(self):
        self.reads += 1
        if self.always_fail_read or self.read_failures > 0:
            self.read_failures -= 1
            raise SourceError("stream dropped")
        return Frame(np.zeros((2, 2, 3), np.uint8), f"flaky#{self.reads}")

    def close(self):
        self.closes += 1


def test_reopening_retries_open_with_backoff_and_reports_status():
    statuses: list[dict] = []
    inner = FlakySource(open_failures=2)
    src = ReopeningSource(inner, min_s=0.02, max_s=1.0, on_status=statuses.append)
    src.open()  # one attempt: fails, reports, does not raise
    assert [s["status"] for s in statuses] == ["failed"] and not src.is_open
    frame, nones = read_until_frame(src)
    assert frame.name == "flaky#1"
    assert nones >= 1  # read() hands back None while it waits rather than blocking
    assert [s["status"] for s in statuses] == ["failed", "failed", "open"]
    assert [s.get("retry_in_s") for s in statuses] == [0.02, 0.04, None]
    assert all(s["source"] == "flaky" for s in statuses)
    assert statuses[0]["error"] == "no camera"
    assert src.failures == 2 and src.is_open
    gaps = np.diff(inner.open_times)
    assert gaps[0] >= 0.02 - 0.002 and gaps[1] >= 0.04 - 0.002, gaps  # the backoff was honoured
    assert src.read().name == "flaky#2"


def test_reopening_backoff_is_capped_and_reset_only_by_a_frame():
    """An open that gives no frame does not reset the backoff (a camera that opens but never delivers would
    otherwise be hammered at min_s); the first frame does."""
    statuses: list[dict] = []
    src = ReopeningSource(FlakySource(open_failures=5, read_failures=1), min_s=0.002, max_s=0.01,
                          on_status=statuses.append)
    read_until_frame(src)
    assert [s.get("retry_in_s") for s in statuses] == [0.002, 0.004, 0.008, 0.01, 0.01, None, 0.01, None]
    assert src._delay == 0.002
    assert [s["status"] for s in statuses][-3:] == ["open", "failed", "open"]


def test_reopening_reopens_a_source_whose_read_fails():
    statuses: list[dict] = []
    inner = FlakySource(read_failures=1)
    src = ReopeningSource(inner, min_s=0.01, on_status=statuses.append)
    frame, _ = read_until_frame(src)  # opens on first read
    assert frame.name == "flaky#2"
    assert [s["status"] for s in statuses] == ["open", "failed", "open"]
    assert statuses[1]["error"] == "stream dropped"
    assert (inner.opens, inner.closes) == (2, 1)


def test_read_failures_are_retried_with_backoff_not_in_a_busy_loop():
    statuses: list[dict] = []
    inner = FlakySource(always_fail_read=True)
    src = ReopeningSource(inner, min_s=0.05, max_s=1.0, on_status=statuses.append)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert src.read() is None
    failed = sum(s["status"] == "failed" for s in statuses)
    assert 2 <= failed <= 8, f"{failed} reopen attempts in 0.3 s with a 0.05 s backoff"
    assert inner.opens == failed


def test_reopening_a_real_folder_skips_its_unreadable_file(tmp_path):
    write_png(tmp_path / "1.png", rgb_image(100, 0, 0))
    (tmp_path / "2.png").write_bytes(b"garbage")
    write_png(tmp_path / "3.png", rgb_image(0, 100, 0))
    statuses: list[dict] = []
    src = ReopeningSource(FolderSource(tmp_path), min_s=0.01, on_status=statuses.append)
    src.open()
    assert src.read().name == "1.png"
    assert read_until_frame(src)[0].name == "3.png"
    with pytest.raises(EndOfStream):
        src.read()
    assert [s["status"] for s in statuses] == ["open", "failed", "open"]
    assert "2.png" in statuses[1]["error"]


def test_end_of_stream_passes_through(tmp_path):
    src = ReopeningSource(FolderSource(tmp_path), min_s=0.01)
    with pytest.raises(EndOfStream):
        src.read()


def test_read_never_blocks_long_during_a_long_backoff():
    src = ReopeningSource(FlakySource(open_failures=10**6), min_s=30.0, max_s=30.0)
    src.open()
    started = time.monotonic()
    assert call_with_timeout(src.read) is None
    assert time.monotonic() - started < 1.5  # a bounded wait (the agent feeds its watchdog), not 30 s


def test_stop_event_ends_the_backoff_wait_at_once():
    stop = threading.Event()
    statuses: list[dict] = []
    inner = FlakySource(open_failures=10**6)
    src = ReopeningSource(inner, min_s=30.0, max_s=30.0, on_status=statuses.append, stop=stop)
    src.open()
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    assert call_with_timeout(src.read) is None
    assert time.monotonic() - started < 0.4  # woken by stop, not by its own 0.5 s bound
    assert src.read() is None  # still stopped: returns at once, no new attempt before the backoff is over
    assert len(inner.open_times) == 1 and [s["status"] for s in statuses] == ["failed"]


def test_close_closes_the_inner_source_and_next_read_reopens():
    inner = FlakySource()
    src = ReopeningSource(inner, min_s=0.01)
    src.read()
    src.close()
    assert inner.closes == 1 and not src.is_open
    src.read()
    assert inner.opens == 2


def test_a_frame_judged_again_after_a_crash_keeps_its_name_and_time(tmp_path: Path) -> None:
    """After a kill between judging a file and saving the cursor, the file comes again: with the same ``name`` and
    ``captured_at`` (the file's time), so a subscriber can tell the repeat from a new part."""
    frames, cursor = tmp_path / "frames", tmp_path / "folder_cursor"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((32, 32, 3), 40 * (i + 1), np.uint8))
    first = FolderSource(frames, watch=True, cursor_file=cursor)
    first.open()
    a = first.read()
    time.sleep(0.05)
    b = first.read()  # saves the cursor at 000.png; 001.png is judged but not yet committed... then the kill
    again = FolderSource(frames, watch=True, cursor_file=cursor)
    again.open()
    repeat = again.read()
    assert (a.name, b.name, repeat.name) == ("000.png", "001.png", "001.png")
    assert repeat.captured_at == b.captured_at == (frames / "001.png").stat().st_mtime


def test_a_watched_folder_forgets_files_that_were_removed(tmp_path: Path) -> None:
    """Months of parts go through a folder the line empties: what the source remembers must not grow with them."""
    source = FolderSource(tmp_path, watch=True, poll_s=0.01)
    source.open()
    for i in range(50):
        path = tmp_path / f"{i:04d}.png"
        cv2.imwrite(str(path), np.full((8, 8, 3), i, np.uint8))
        assert source.read().name == path.name
        path.unlink()  # archived by the line once judged
    assert source.read() is None  # nothing new
    assert len(source._seen) == 0
