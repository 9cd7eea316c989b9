"""``[camera]``: validation that names the key and what to change, the mapping to picamera2 and to OpenCV, and
the OpenCV source setting (or reporting) each property. The Pi camera's side is in tests/test_picamera.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.capture import ReopeningSource
from edge_agent.capture.controls import V4L2_EXPOSURE_UNIT_US, opencv_properties, picamera2_controls
from edge_agent.capture.factory import open_source
from edge_agent.capture.opencv import OpenCVSource
from edge_agent.config import CameraConfig, ConfigError, config_from_dict
from tests.conftest import write_clip

LOCKED = {"ae": False, "exposure_us": 8000, "analogue_gain": 2.0, "awb": False, "colour_gains": [1.9, 1.5],
          "af_mode": "manual", "lens_position": 4.5, "frame_duration_limits_us": [20000, 25000]}


def camera(**values) -> CameraConfig:
    return config_from_dict({"source": {"path": "/frames"}, "camera": values}).camera


# ---- validation ---------------------------------------------------------------------------------------------


def test_no_camera_section_means_the_cameras_own_behaviour():
    c = config_from_dict({"source": {"path": "/frames"}})
    assert c.camera == CameraConfig() and c.source.camera_num == 0
    assert picamera2_controls(c.camera) == {}
    assert opencv_properties(c.camera) == ([], {})


def test_a_locked_camera_is_accepted():
    assert camera(**LOCKED).colour_gains == [1.9, 1.5]


@pytest.mark.parametrize("values, fragment", [
    ({"exposure_us": 5000}, "[camera] exposure_us and analogue_gain are held only with ae = false"),
    ({"analogue_gain": 2.0}, "set ae = false"),
    ({"ae": False}, "[camera] ae = false needs exposure_us and analogue_gain"),
    ({"ae": False, "exposure_us": 5000}, "read the values the camera settled on from the state"),
    ({"ae": False, "exposure_us": 5000, "analogue_gain": 0.5}, "[camera] analogue_gain is 0.5: 0 (automatic) or"),
    ({"colour_gains": [1.9, 1.5]}, "[camera] colour_gains = [red, blue] go with awb = false"),
    ({"awb": False}, "awb = false needs them"),
    ({"colour_gains": [1.9]}, "[camera] colour_gains is [1.9]; it must be [] or two numbers between 0.0 and 32.0"),
    ({"awb": False, "colour_gains": [1.9, 40]}, "[camera] colour_gains is [1.9, 40.0]"),
    ({"lens_position": 2.0}, "[camera] lens_position goes with af_mode = \"manual\""),
    ({"af_mode": "manual"}, "manual needs it"),
    ({"af_mode": "manual", "lens_position": -0.5}, "[camera] lens_position is -0.5: -1 (not set) or dioptres >= 0"),
    ({"af_mode": "macro"}, "[camera] af_mode is 'macro'; choose one of: default, manual, auto, continuous"),
    ({"frame_duration_limits_us": [40000, 30000]}, "[camera] frame_duration_limits_us is [40000, 30000]: [min, max]"),
    ({"frame_duration_limits_us": [50, 30000]}, "[camera] frame_duration_limits_us is [50, 30000]; it must be"),
    ({"frame_duration_limits_us": [33333.3, 40000]}, "[camera] frame_duration_limits_us must be a list of integers"),
    ({"ae": False, "exposure_us": 40000, "analogue_gain": 1.0, "frame_duration_limits_us": [20000, 30000]},
     "[camera] exposure_us = 40000 is longer than frame_duration_limits_us' max 30000"),
    ({"exposure_us": -5}, "[camera] exposure_us is -5; it must be between 0 and"),
    ({"analogue_gain": 100.0}, "[camera] analogue_gain is 100.0; it must be between 0 and 64"),
    ({"ae": "off"}, "[camera] ae must be true or false"),
])
def test_mistakes_name_the_key_and_what_to_do(values, fragment):
    with pytest.raises(ConfigError) as err:
        camera(**values)
    assert fragment in str(err.value), str(err.value)


def test_camera_num_is_a_source_key_with_a_range():
    assert config_from_dict({"source": {"kind": "picamera2", "camera_num": 1}}).source.camera_num == 1
    with pytest.raises(ConfigError, match=r"\[source\] camera_num is 16; it must be between 0 and 15"):
        config_from_dict({"source": {"kind": "picamera2", "camera_num": 16}})


def test_a_typo_in_the_camera_section_suggests_the_key():
    with pytest.raises(ConfigError, match=r"unknown key \[camera\] exposure \(did you mean exposure_us\?\)"):
        camera(exposure=5000)


# ---- mapping ------------------------------------------------------------------------------------------------


def test_picamera2_names_and_values():
    assert picamera2_controls(camera(**LOCKED)) == {
        "AeEnable": False, "ExposureTime": 8000, "AnalogueGain": 2.0, "AwbEnable": False, "ColourGains": (1.9, 1.5),
        "AfMode": "Manual", "LensPosition": 4.5, "FrameDurationLimits": (20000, 25000)}
    assert picamera2_controls(camera(af_mode="continuous")) == {"AfMode": "Continuous"}
    assert picamera2_controls(camera(af_mode="auto")) == {"AfMode": "Auto", "AfTrigger": "Start"}


def test_opencv_properties_in_v4l2_units_and_order_and_what_cannot_map():
    props, ignored = opencv_properties(camera(**LOCKED))
    assert props == [("CAP_PROP_AUTO_EXPOSURE", 1), ("CAP_PROP_EXPOSURE", 8000 / V4L2_EXPOSURE_UNIT_US),
                     ("CAP_PROP_AUTO_WB", 0), ("CAP_PROP_AUTOFOCUS", 0), ("CAP_PROP_FPS", 40.0)]
    assert props[1][1] == 80  # V4L2 exposure_time_absolute counts 100 µs
    assert set(ignored) == {"analogue_gain", "colour_gains", "lens_position"}
    assert all(hasattr(cv2, name) for name, _ in props)
    assert opencv_properties(camera(af_mode="continuous")) == ([("CAP_PROP_AUTOFOCUS", 1)], {})
    assert set(opencv_properties(camera(af_mode="auto"))[1]) == {"af_mode"}


# ---- the OpenCV source --------------------------------------------------------------------------------------


@pytest.fixture
def video_file(tmp_path) -> Path:
    return write_clip(tmp_path / "clip.avi", [np.full((48, 64, 3), value, np.uint8) for value in (50, 100, 150)])


def opencv_source(uri: str, **values) -> OpenCVSource:
    config = config_from_dict({"source": {"kind": "opencv", "uri": uri}, "camera": values})
    return open_source(config.source, camera=config.camera)


def test_a_video_file_takes_no_controls_and_the_report_says_so(video_file, caplog):
    source = opencv_source(str(video_file), **LOCKED)
    statuses: list[dict] = []
    wrapper = ReopeningSource(source, on_status=statuses.append)
    with caplog.at_level(logging.WARNING):
        wrapper.open()
    report = statuses[-1]
    assert report["status"] == "open" and report["controls"] == {}
    props = ["CAP_PROP_AUTO_EXPOSURE", "CAP_PROP_EXPOSURE", "CAP_PROP_AUTO_WB", "CAP_PROP_AUTOFOCUS", "CAP_PROP_FPS"]
    assert set(report["ignored"]) == {*props, "analogue_gain", "colour_gains", "lens_position"}
    assert all("returned False" in report["ignored"][p] for p in props)
    assert "driver's own units" in report["ignored"]["lens_position"]
    assert wrapper.read().image.shape == (48, 64, 3)  # frames come all the same
    warnings = [r.getMessage() for r in caplog.records if "camera controls not applied" in r.getMessage()]
    assert len(warnings) == 1
    wrapper.close()
    with caplog.at_level(logging.WARNING):
        wrapper.open()  # a reopen does not log it again
    assert len([r for r in caplog.records if "camera controls not applied" in r.getMessage()]) == 1


def test_a_video_file_without_controls_reports_nothing(video_file):
    source = opencv_source(str(video_file))
    source.open()
    assert source.describe() == {}


class _Camera:
    """cv2.VideoCapture for a V4L2 camera (none here): takes every property; ``queued`` frames come at once."""

    instances: list[_Camera] = []

    def __init__(self, uri, *args):
        self.sets: list[tuple[int, float]] = []
        self.queued, self.frame = 0, 0
        _Camera.instances.append(self)

    def isOpened(self):
        return True

    def set(self, prop, value):
        self.sets.append((prop, value))
        return prop != cv2.CAP_PROP_FPS  # a camera with one fixed rate

    def grab(self):
        if self.queued:
            self.queued -= 1
        else:
            time.sleep(0.02)  # the next frame from the sensor
        self.frame += 1
        return True

    def read(self):
        self.grab()
        return True, np.full((4, 4, 3), self.frame, np.uint8)

    def release(self):
        pass


@pytest.fixture
def usb_camera(monkeypatch) -> type[_Camera]:
    monkeypatch.setattr(_Camera, "instances", [])
    monkeypatch.setattr(cv2, "VideoCapture", _Camera)
    return _Camera


def test_a_camera_gets_its_properties_in_order_and_the_report_says_which_took(usb_camera):
    source = opencv_source("0", **LOCKED)
    source.open()
    cam = usb_camera.instances[0]
    assert cam.sets == [(cv2.CAP_PROP_AUTO_EXPOSURE, 1), (cv2.CAP_PROP_EXPOSURE, 80.0), (cv2.CAP_PROP_AUTO_WB, 0),
                        (cv2.CAP_PROP_AUTOFOCUS, 0), (cv2.CAP_PROP_FPS, 40.0)]
    report = source.describe()
    assert report["controls"] == {"CAP_PROP_AUTO_EXPOSURE": 1, "CAP_PROP_EXPOSURE": 80.0, "CAP_PROP_AUTO_WB": 0,
                                  "CAP_PROP_AUTOFOCUS": 0}
    assert "returned False" in report["ignored"]["CAP_PROP_FPS"]


def test_read_after_a_trigger_drops_the_frames_the_driver_had_queued(usb_camera):
    source = opencv_source("0")
    source.open()
    usb_camera.instances[0].queued = 3
    frame = source.read_after(time.monotonic())
    # Frames 1-3 were queued, frame 4 had to be waited for (it may have begun before the call): frame 5.
    assert frame.image[0, 0, 0] == 5
    assert source.read().image[0, 0, 0] == 6  # a plain read takes the next one


def test_read_after_on_a_video_file_is_a_plain_read(video_file):
    source = opencv_source(str(video_file))
    source.open()
    assert source.read_after(time.monotonic()).name.endswith("#1")
