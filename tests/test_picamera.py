"""The Pi camera source against a picamera2 double (no camera here).

The double's class, method names and signatures are picamera2 0.3.36's (picamera2/picamera2.py, request.py,
job.py; github.com/raspberrypi/picamera2), so a call the real library would refuse with a TypeError is refused
here too; the double records every call and reproduces the behaviours the source relies on: "BGR888" is R, G, B
in memory, VC4 refuses a lores stream that is not YUV, a control the camera does not advertise makes
``configure`` raise, ``capture_request(wait=<seconds>)`` raises TimeoutError from a job that never completes,
``flush`` drops frames whose exposure began before it, SensorTimestamp is CLOCK_MONOTONIC nanoseconds.
"""

from __future__ import annotations

import enum
import sys
import time
import types
from concurrent.futures import Future
from typing import Any, ClassVar

import numpy as np
import pytest

from edge_agent.capture import ReopeningSource, SourceError
from edge_agent.capture import picamera as picamera_module
from edge_agent.capture.factory import open_source
from edge_agent.capture.picamera import PiCameraSource
from edge_agent.config import config_from_dict

SCENE_RGB = (200, 120, 40)
FRAME_PERIOD_S = 0.01
EXPOSURE_US = 4000


class AfModeEnum(enum.IntEnum):  # libcamera.controls.AfModeEnum
    Manual = 0
    Auto = 1
    Continuous = 2


class AfTriggerEnum(enum.IntEnum):  # libcamera.controls.AfTriggerEnum
    Start = 0
    Cancel = 1


class Platform(enum.Enum):  # picamera2.platform.Platform
    VC4 = 0
    PISP = 1


#: camera_controls of a Camera Module 3 (imx708): {name: (min, max, default)}, the ones the source may set.
CM3_CONTROLS = {
    "AeEnable": (False, True, True), "ExposureTime": (26, 112015443, 20000), "AnalogueGain": (1.12, 16.0, 1.0),
    "AwbEnable": (False, True, True), "ColourGains": (0.0, 32.0, None), "AfMode": (0, 2, 0),
    "AfTrigger": (0, 1, 0), "LensPosition": (0.0, 15.0, 1.0), "FrameDurationLimits": (33333, 120000000, 33333),
    "NoiseReductionMode": (0, 4, 0),
}
NO_AF = {k: v for k, v in CM3_CONTROLS.items() if not k.startswith(("Af", "Lens"))}


def memory_bytes(fmt: str, rgb: tuple[int, int, int]) -> tuple[int, ...]:
    """A pixel's bytes in memory as libcamera lays out the format (picamera2 manual, appendix A)."""
    r, g, b = rgb
    return {"BGR888": (r, g, b), "RGB888": (b, g, r), "XBGR8888": (r, g, b, 255), "XRGB8888": (b, g, r, 255)}[fmt]


class CompletedRequest:
    """picamera2.request.CompletedRequest: make_array(name), get_metadata(), release()."""

    def __init__(self, camera: Picamera2, metadata: dict[str, Any]) -> None:
        self.camera, self.metadata, self.ref_count = camera, metadata, 1

    def make_array(self, name: str) -> np.ndarray:
        config = self.camera.camera_config.get(name)
        if config is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        (w, h), fmt = config["size"], config["format"]
        if fmt == "YUV420":
            return np.zeros((h * 3 // 2, w), np.uint8)
        pixel = memory_bytes(fmt, SCENE_RGB)
        array = np.empty((h, w, len(pixel)), np.uint8)
        array[:] = pixel
        array[0, 0, 0] = self.metadata["SensorSequence"] % 256  # which frame this is
        self.camera.arrays.append(array)
        return array.copy()  # a copy, as picamera2's make_array returns

    def get_metadata(self) -> dict[str, Any]:
        return dict(self.metadata)

    def release(self) -> None:
        self.ref_count -= 1
        if self.ref_count < 0:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        self.camera.released.append(self.metadata["SensorSequence"])


class Picamera2:
    """picamera2.Picamera2 as far as the source uses it, with picamera2 0.3.36's signatures."""

    platform: ClassVar[Platform] = Platform.VC4
    connected: ClassVar[int] = 2  # cameras attached
    advertised: ClassVar[dict[str, tuple]] = CM3_CONTROLS
    instances: ClassVar[list[Picamera2]] = []
    fail: ClassVar[str] = ""  # "configure" or "start": that call raises RuntimeError
    hang = False  # capture_request's job never completes (cable pulled)
    queued_frames = 0  # frames completed before a capture is asked for (in trigger mode: before the trigger)
    readout_lag_ns = 0  # how long before capture_request returns a new frame its readout began

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        self.calls: list[tuple[str, Any]] = [("__init__", camera_num)]
        if camera_num >= self.connected:
            raise IndexError("list index out of range")  # global_camera_info()[camera_num]
        self.camera_num = camera_num
        self.camera_config: dict[str, Any] = {}
        self.started = False
        self.is_open = True
        self.arrays: list[np.ndarray] = []
        self.released: list[int] = []
        self.jobs: list[Future] = []
        self._sequence = 0
        self._queue: list[CompletedRequest] = []
        Picamera2.instances.append(self)

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return dict(self.advertised)

    @property
    def camera_properties(self) -> dict[str, Any]:
        return {"Model": "imx708", "PixelArraySize": (4608, 2592)}

    def create_video_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                   buffer_count=6, controls={}, display="main", encode="main", queue=True,
                                   sensor={}, use_case="video") -> dict[str, Any]:
        self.calls.append(("create_video_configuration", {"main": main, "lores": lores, "controls": controls}))
        main = {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True} | main
        if lores is not None:
            lores = {"format": "YUV420", "size": main["size"], "preserve_ar": False} | lores
        if "NoiseReductionMode" in self.camera_controls and "FrameDurationLimits" in self.camera_controls:
            controls = {"NoiseReductionMode": "Fast", "FrameDurationLimits": (33333, 33333)} | controls
        return {"use_case": use_case, "buffer_count": buffer_count, "queue": queue, "main": main, "lores": lores,
                "raw": raw, "controls": controls}

    def create_still_configuration(self, main={}, lores=None, raw={}, transform=None, colour_space=None,
                                   buffer_count=1, controls={}, display=None, encode=None, queue=True,
                                   sensor={}, use_case="still") -> dict[str, Any]:
        raise AssertionError("the source uses the video configuration (short frame durations)")

    def configure(self, camera_config=None) -> None:
        self.calls.append(("configure", camera_config))
        if self.fail == "configure":
            raise RuntimeError("Failed to configure camera")
        lores = camera_config["lores"]
        if lores is not None:
            (w, h), (mw, mh) = lores["size"], camera_config["main"]["size"]
            if w > mw or h > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == Platform.VC4 and lores["format"] not in ("YUV420", "YVU420"):
                raise RuntimeError("lores stream must be YUV")
        for name in camera_config["controls"]:
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        self.camera_config = camera_config

    def start(self, config=None, show_preview=False) -> None:
        self.calls.append(("start", config))
        if self.fail == "start":
            raise RuntimeError("Failed to start camera: Device or resource busy")
        for _ in range(self.queued_frames):
            self._queue.append(self._frame(time.monotonic_ns() - 1_000_000_000))
        self.started = True

    def stop(self) -> None:
        self.calls.append(("stop", None))
        self.started = False

    def close(self) -> None:
        self.calls.append(("close", None))
        self.stop()
        self.is_open = False

    def set_controls(self, controls) -> None:
        self.calls.append(("set_controls", controls))

    def cancel_all_and_flush(self) -> None:
        self.calls.append(("cancel_all_and_flush", None))
        self.jobs = []

    def wait(self, job, timeout=None):
        return job.result(timeout=timeout)

    def _frame(self, sensor_timestamp_ns: int) -> CompletedRequest:
        self._sequence += 1
        controls = self.camera_config["controls"]
        return CompletedRequest(self, {
            "SensorSequence": self._sequence, "SensorTimestamp": sensor_timestamp_ns,
            "ExposureTime": controls.get("ExposureTime", EXPOSURE_US),
            "AnalogueGain": controls.get("AnalogueGain", 2.5),
            "ColourGains": controls.get("ColourGains", (1.8, 1.6)), "FrameDuration": 33333, "Lux": 400.0})

    def capture_request(self, wait=None, signal_function=None, flush=None):
        self.calls.append(("capture_request", {"wait": wait, "flush": flush}))
        assert self.started, "capture_request before start"
        if flush is True:
            flush = time.monotonic_ns()
        job: Future = Future()
        self.jobs.append(job)
        while not self.hang:
            if self._queue:
                request = self._queue.pop(0)
            else:  # the sensor delivers the next frame, a frame period from now
                time.sleep(FRAME_PERIOD_S)
                request = self._frame(time.monotonic_ns() - self.readout_lag_ns)
            md = request.metadata
            if not flush or md["SensorTimestamp"] - 1000 * md["ExposureTime"] >= flush:  # wait_for_timestamp_
                job.set_result(request)
                break
            request.release()
        if wait is None:
            wait = signal_function is None
        return job.result(timeout=None if wait is True else wait) if wait else job

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def configured(self) -> dict[str, Any]:
        return next(arg for name, arg in self.calls if name == "configure")


@pytest.fixture
def picamera2(monkeypatch) -> type[Picamera2]:
    """The double installed as the ``picamera2`` and ``libcamera`` modules, reset for each test."""
    monkeypatch.setattr(Picamera2, "instances", [])
    for name, value in (("platform", Platform.VC4), ("connected", 2), ("advertised", CM3_CONTROLS), ("fail", ""),
                        ("hang", False), ("queued_frames", 0), ("readout_lag_ns", 0)):
        monkeypatch.setattr(Picamera2, name, value)
    picamera2_module = types.ModuleType("picamera2")
    picamera2_module.Picamera2 = Picamera2
    libcamera_module = types.ModuleType("libcamera")
    libcamera_module.controls = types.SimpleNamespace(AfModeEnum=AfModeEnum, AfTriggerEnum=AfTriggerEnum)
    monkeypatch.setitem(sys.modules, "picamera2", picamera2_module)
    monkeypatch.setitem(sys.modules, "libcamera", libcamera_module)
    return Picamera2


def opened(source: PiCameraSource) -> tuple[PiCameraSource, Picamera2]:
    source.open()
    return source, Picamera2.instances[-1]


# ---- opening -------------------------------------------------------------------------------------------------


def test_the_video_configuration_with_memory_rgb_and_no_controls_by_default(picamera2):
    source, cam = opened(PiCameraSource(64, 48))
    assert cam.calls[0] == ("__init__", 0)
    assert cam.calls[1] == ("create_video_configuration",
                            {"main": {"size": (64, 48), "format": "BGR888"}, "lores": None, "controls": {}})
    assert cam.names() == ["__init__", "create_video_configuration", "configure", "start"]
    # The video configuration's own frame duration (30 fps) stays: auto-exposure cannot stretch to 1 s.
    assert cam.configured()["controls"]["FrameDurationLimits"] == (33333, 33333)
    source.close()
    source.close()  # safe twice
    assert cam.names()[-2:] == ["close", "stop"] and cam.names().count("close") == 1


def test_frames_need_no_colour_conversion(picamera2):
    source, cam = opened(PiCameraSource(64, 48))
    frame = source.read()
    assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
    assert np.array_equal(frame.image, cam.arrays[-1])  # byte for byte what the camera gave
    assert tuple(frame.image[5, 5]) == SCENE_RGB  # and that is R, G, B
    assert frame.model_image is None
    assert [source.read().name for _ in range(2)] == ["picamera2#2", "picamera2#3"]


def test_default_size_and_camera_number(picamera2):
    source, cam = opened(PiCameraSource(camera_num=1))
    assert cam.calls[0] == ("__init__", 1)
    assert source.read().image.shape == (960, 1280, 3)
    assert source.describe()["camera_num"] == 1


def test_a_camera_number_not_connected_is_a_source_error_naming_it(picamera2):
    with pytest.raises(SourceError, match=r"cannot open Pi camera 3 \(IndexError.*rpicam-hello --list-cameras"):
        PiCameraSource(camera_num=3).open()


@pytest.mark.parametrize("failing", ["configure", "start"])
def test_a_failed_configure_or_start_closes_the_camera(picamera2, failing):
    picamera2.fail = failing
    source = PiCameraSource()
    with pytest.raises(SourceError, match=rf"cannot start Pi camera 0: RuntimeError: Failed to {failing}"):
        source.open()
    cam = picamera2.instances[0]
    assert "close" in cam.names() and not cam.is_open  # the camera is free for the next attempt
    with pytest.raises(SourceError, match="not open"):
        source.read()


# ---- importing ----------------------------------------------------------------------------------------------


def test_picamera2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes `import picamera2` raise ImportError
    with pytest.raises(SourceError) as err:
        PiCameraSource().open()
    msg = str(err.value)
    assert "picamera2 is not importable (ModuleNotFoundError" in msg
    assert "sudo apt install python3-picamera2" in msg and "--system-site-packages" in msg


NUMPY_ABI = ("numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, got 88 "
             "from PyObject")


@pytest.fixture
def picamera2_with_a_foreign_numpy(monkeypatch, tmp_path):
    """A picamera2 whose import fails as it does when pip put a numpy of another ABI into the venv."""
    (tmp_path / "picamera2.py").write_text(f"raise ValueError({NUMPY_ABI!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)


def test_a_value_error_on_import_is_a_source_error_that_names_the_fix(picamera2_with_a_foreign_numpy):
    with pytest.raises(SourceError) as err:
        PiCameraSource().open()
    msg = str(err.value)
    assert "ValueError: numpy.dtype size changed" in msg
    assert "numpy" in msg.split(";")[1] and "docs/camera.md" in msg


def test_a_value_error_on_import_ends_in_retries_with_backoff_not_an_exit(picamera2_with_a_foreign_numpy, caplog):
    statuses: list[dict] = []
    source = ReopeningSource(PiCameraSource(), min_s=0.01, max_s=0.04, on_status=statuses.append)
    source.open()  # what the agent does first: no exception
    deadline = time.monotonic() + 5
    while len(statuses) < 4 and time.monotonic() < deadline:
        assert source.read() is None
    assert [s["status"] for s in statuses] == ["failed"] * 4
    assert [s["retry_in_s"] for s in statuses] == [0.01, 0.02, 0.04, 0.04]
    assert all("numpy.dtype size changed" in s["error"] for s in statuses)
    lines = [r.getMessage() for r in caplog.records if "picamera2 is not importable" in r.getMessage()]
    assert len(lines) == 4 and all("retrying in" in line for line in lines)  # one line per attempt


# ---- capturing ----------------------------------------------------------------------------------------------


def test_a_capture_that_never_completes_times_out_into_a_source_error(picamera2, monkeypatch):
    monkeypatch.setattr(picamera_module, "CAPTURE_TIMEOUT_S", 0.05)
    source, cam = opened(PiCameraSource())
    cam.hang = True
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"Pi camera 0 gave no frame within 0\.2 s"):
        source.read()
    assert time.monotonic() - started < 2
    assert cam.calls[-2] == ("capture_request", {"wait": pytest.approx(0.05 + 4 * 0.033333), "flush": None})
    assert cam.names()[-1] == "cancel_all_and_flush"


def test_a_hung_camera_is_closed_and_reopened_by_the_wrapper(picamera2, monkeypatch):
    monkeypatch.setattr(picamera_module, "CAPTURE_TIMEOUT_S", 0.01)
    statuses: list[dict] = []
    source = ReopeningSource(PiCameraSource(), min_s=0.01, max_s=0.1, on_status=statuses.append)
    source.open()
    picamera2.instances[0].hang = True
    assert source.read() is None
    assert "close" in picamera2.instances[0].names()
    assert statuses[-1]["status"] == "failed" and "gave no frame" in statuses[-1]["error"]
    time.sleep(0.02)
    picamera2.hang = False
    assert source.poll_open() and len(picamera2.instances) == 2
    assert source.read() is not None


def test_every_request_is_released_even_when_reading_it_fails(picamera2, monkeypatch):
    source, cam = opened(PiCameraSource(64, 48))
    source.read()
    assert cam.released == [1]
    monkeypatch.setattr(CompletedRequest, "make_array", lambda self, name: (_ for _ in ()).throw(RuntimeError("mmap")))
    with pytest.raises(SourceError, match="capture failed: RuntimeError: mmap"):
        source.read()
    assert cam.released == [1, 2]


def test_the_sensor_timestamp_is_the_frames_capture_time(picamera2):
    picamera2.readout_lag_ns = 300_000_000  # the frame began readout 0.3 s before capture_request returned it
    source, _ = opened(PiCameraSource(64, 48))
    frame = source.read()
    assert frame.captured_at == pytest.approx(time.time() - 0.3, abs=0.05)


def test_read_after_a_trigger_takes_a_frame_exposed_after_it(picamera2):
    picamera2.queued_frames = 3  # finished before the trigger: a plain read would hand out the first
    source, cam = opened(PiCameraSource(64, 48))
    trigger = time.monotonic()
    frame = source.read_after(trigger)
    assert cam.calls[-1] == ("capture_request", {"wait": pytest.approx(2.133332), "flush": int(trigger * 1e9)})
    assert frame.image[0, 0, 0] == 4  # frame 4: the three queued ones were dropped
    assert cam.released == [1, 2, 3, 4]


def test_read_after_through_the_reopening_wrapper(picamera2):
    picamera2.queued_frames = 2
    source = ReopeningSource(PiCameraSource(64, 48))
    source.open()
    assert source.read_after(time.monotonic()).image[0, 0, 0] == 3


# ---- lores --------------------------------------------------------------------------------------------------


def test_a_lores_stream_at_the_model_size_on_a_pi5(picamera2):
    picamera2.platform = Platform.PISP
    source, cam = opened(PiCameraSource(640, 640, lores_size=(224, 224)))
    assert cam.configured()["lores"] == {"size": (224, 224), "format": "BGR888", "preserve_ar": False}
    frame = source.read()
    assert frame.image.shape == (640, 640, 3)
    assert frame.model_image.shape == (224, 224, 3) and tuple(frame.model_image[5, 5]) == SCENE_RGB
    assert source.describe()["lores"] == [224, 224]


@pytest.mark.parametrize("platform, size, model", [
    (Platform.VC4, (640, 640), (224, 224)),  # a Pi 4: lores would be YUV only
    (Platform.PISP, (1280, 960), (224, 224)),  # another aspect ratio
    (Platform.PISP, (200, 200), (224, 224)),  # larger than main
    (Platform.PISP, (640, 640), (223, 223)),  # odd: picamera2 would align it away
])
def test_no_lores_where_it_would_not_remove_the_resize(picamera2, platform, size, model):
    picamera2.platform = platform
    source, cam = opened(PiCameraSource(*size, lores_size=model))
    assert cam.configured()["lores"] is None
    assert source.read().model_image is None


@pytest.mark.parametrize("roi, lores", [([], [224, 224]), ([0.1, 0.1, 0.5, 0.5], None)])
def test_the_factory_asks_for_lores_only_without_a_roi(picamera2, roi, lores):
    picamera2.platform = Platform.PISP
    config = config_from_dict({"source": {"kind": "picamera2", "width": 448, "height": 448, "roi": roi}})
    source = open_source(config.source, camera=config.camera, model_size=(224, 224))
    source.open()
    assert source.describe()["lores"] == lores


# ---- controls -----------------------------------------------------------------------------------------------

LOCKED = {"ae": False, "exposure_us": 8000, "analogue_gain": 2.0, "awb": False, "colour_gains": [1.9, 1.5],
          "af_mode": "manual", "lens_position": 4.5, "frame_duration_limits_us": [20000, 20000]}


def camera_source(picamera2_class, **camera) -> PiCameraSource:
    config = config_from_dict({"source": {"kind": "picamera2", "camera_num": 1}, "camera": camera})
    return open_source(config.source, camera=config.camera)


def test_controls_are_applied_at_configure_with_picamera2_names_and_values(picamera2):
    source, cam = opened(camera_source(picamera2, **LOCKED))
    assert cam.calls[0] == ("__init__", 1)
    controls = cam.configured()["controls"]
    assert controls == {"NoiseReductionMode": "Fast", "AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 2.0,
                        "AwbEnable": False, "ColourGains": (1.9, 1.5), "AfMode": AfModeEnum.Manual,
                        "LensPosition": 4.5, "FrameDurationLimits": (20000, 20000)}
    assert type(controls["AfMode"]) is AfModeEnum  # libcamera's enum, as picamera2's examples pass it
    report = source.describe()
    assert report["controls"] == {"AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 2.0, "AwbEnable": False,
                                  "ColourGains": [1.9, 1.5], "AfMode": "Manual", "LensPosition": 4.5,
                                  "FrameDurationLimits": [20000, 20000]}
    assert report["ignored"] == {}
    assert "set_controls" not in cam.names()


def test_af_auto_scans_once_at_start(picamera2):
    _, cam = opened(camera_source(picamera2, af_mode="auto"))
    controls = cam.configured()["controls"]
    assert (controls["AfMode"], controls["AfTrigger"]) == (AfModeEnum.Auto, AfTriggerEnum.Start)


def test_controls_the_camera_lacks_are_reported_not_fatal(picamera2):
    picamera2.advertised = NO_AF  # a Camera Module 2: no autofocus
    source, cam = opened(camera_source(picamera2, af_mode="manual", lens_position=2.0))
    assert "AfMode" not in cam.configured()["controls"]
    assert set(source.describe()["ignored"]) == {"AfMode", "LensPosition"}
    assert "no autofocus" in source.describe()["ignored"]["AfMode"]
    assert source.read() is not None


def test_an_exposure_longer_than_the_default_frame_duration_is_reported(picamera2):
    source, _ = opened(camera_source(picamera2, ae=False, exposure_us=50000, analogue_gain=1.0))
    assert "frame_duration_limits_us" in source.describe()["ignored"]["ExposureTime"]


def test_the_wrapper_reports_controls_on_open_and_the_settled_values_live(picamera2):
    statuses: list[dict] = []
    source = ReopeningSource(camera_source(picamera2, ae=False, exposure_us=8000, analogue_gain=2.0),
                             on_status=statuses.append)
    source.open()
    assert statuses[-1]["status"] == "open" and statuses[-1]["controls"]["ExposureTime"] == 8000
    assert statuses[-1]["camera_num"] == 1 and statuses[-1]["settled"] == {}
    source.read()
    assert source.describe()["settled"] == {"ExposureTime": 8000, "AnalogueGain": 2.0, "ColourGains": [1.8, 1.6],
                                            "FrameDuration": 33333}
    source.close()
    assert source.describe() == {}


def test_an_old_config_sets_no_controls(picamera2):
    config = config_from_dict({"source": {"kind": "picamera2"}})
    source, cam = opened(open_source(config.source))
    assert cam.calls[1][1]["controls"] == {}
    assert source.describe()["controls"] == {} and source.describe()["ignored"] == {}


# ---- through the agent ----------------------------------------------------------------------------------------


def test_the_agent_opens_the_camera_with_its_controls_and_takes_each_triggered_frame_after_the_trigger(
        picamera2, tmp_path):
    """The whole wiring: [camera] applied at open and shown in the state with the live values; in trigger mode
    each trigger asks the camera for a frame exposed after it (the part at the light barrier, not a queued one)."""
    import threading

    from edge_agent.cli import build_agent
    from tests.mqtt_broker import wait_until

    picamera2.queued_frames = 3
    config = config_from_dict({
        "device": {"state_dir": str(tmp_path / "state")}, "model": {"delegate": "cpu"},
        "source": {"kind": "picamera2", "width": 64, "height": 48}, "trigger": {"mode": "mqtt"},
        "mqtt": {"enabled": False}, "camera": {"ae": False, "exposure_us": 8000, "analogue_gain": 2.0}})
    agent = build_agent(config)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: Picamera2.instances and Picamera2.instances[-1].started, 10)
        cam = Picamera2.instances[-1]
        assert cam.configured()["controls"]["ExposureTime"] == 8000
        before = time.monotonic()
        agent.trigger("P-1")
        assert wait_until(lambda: any(name == "capture_request" for name, _ in cam.calls), 10)
        flush = next(arg["flush"] for name, arg in cam.calls if name == "capture_request")
        assert flush >= int(before * 1e9)  # a frame exposed after the trigger was asked for
        assert wait_until(lambda: cam.released == [1, 2, 3, 4], 10)  # the queued frames were dropped
        state = agent.state()["source"]
        assert state["status"] == "open" and state["controls"]["ExposureTime"] == 8000
        assert state["settled"]["ExposureTime"] == 8000  # what the camera ran with, for locking a line
    finally:
        agent.stop()
        runner.join(20)
