"""The Raspberry Pi camera through picamera2 (apt's python3-picamera2 on Raspberry Pi OS; imported by ``open``).

Each call is picamera2's own (checked against picamera2 0.3.36: picamera2/picamera2.py and its examples):

* ``create_video_configuration``, not the still one: its FrameDurationLimits default to 33 333 µs (30 fps), so
  auto-exposure cannot stretch an exposure on a moving line, where the still configuration's reach 1 s; its
  6 buffers keep the ISP running while a request is held, and ``queue=True`` (the default) lets a continuous
  read take the newest finished frame at once.
* main format "BGR888": libcamera names formats the other way round, "BGR888" is R, G, B in memory, which is
  the RGB array the agent wants: no conversion (the picamera2 manual, appendix A).
* a ``lores`` stream at the model's input size when the factory passes one (no ROI), the main stream has the
  model's aspect ratio and the Pi is a Pi 5 (PiSP): the ISP scales and the agent skips its resize. A Pi 4 or
  earlier (VC4) allows only YUV420 for lores, which would need a colour conversion whose matrix must match the
  colour space; that is not worth the millisecond or two of resize it saves, so main only there.
* controls in the configuration's ``controls=`` (examples/exposure_fixed.py): applied from the first frame.
  Only controls the camera advertises (``camera_controls``) are passed, since picamera2 refuses the others;
  those are reported as ignored, as is an exposure longer than the frame duration allows.
* ``capture_request(wait=<seconds>, flush=<ns>)``: a timeout instead of a hang until the systemd watchdog, and
  in trigger mode a frame whose exposure began after the trigger (examples/timestamp_capture.py). The request's
  SensorTimestamp (CLOCK_MONOTONIC ns, the start of readout) becomes the frame's ``captured_at``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edge_agent.capture.base import Frame, FrameSource, SourceError
from edge_agent.capture.controls import ENUM_CONTROLS

log = logging.getLogger(__name__)

DEFAULT_SIZE = (1280, 960)
RGB_IN_MEMORY = "BGR888"  # libcamera's name for R, G, B bytes
#: The longest a capture may take on top of a few frame durations before the camera counts as hung.
CAPTURE_TIMEOUT_S = 2.0
#: Frame durations a capture may wait for: one in progress, the one a flush skips, the one it takes, and slack.
_FRAMES_PER_CAPTURE = 4
#: Metadata the state shows as what the camera settled on: the values to lock a line with (docs/camera.md).
SETTLED = ("ExposureTime", "AnalogueGain", "ColourGains", "LensPosition", "FrameDuration")

_IMPORT_HELP = ("on Raspberry Pi OS install it with 'sudo apt install python3-picamera2', create the virtual "
                "environment with --system-site-packages, and keep pip from installing its own numpy over the "
                "system's (a 'numpy.dtype size changed' error means it did): docs/camera.md")


class PiCameraSource(FrameSource):
    name = "picamera2"

    def __init__(self, width: int = 0, height: int = 0, camera_num: int = 0, controls: dict[str, Any] | None = None,
                 lores_size: tuple[int, int] | None = None) -> None:
        """``controls``: `edge_agent.capture.controls.picamera2_controls`' output; ``lores_size``: the model's
        input (width, height), or None for main only (a ROI crops the main stream before the model)."""
        self.size = (width, height) if width else DEFAULT_SIZE
        self.camera_num = camera_num
        self.controls = controls or {}
        self.lores_size = lores_size
        self._camera = None
        self._lores = False
        self._timeout_s = CAPTURE_TIMEOUT_S
        self._count = 0
        self._report: dict[str, Any] = {}
        self._settled: dict[str, Any] = {}

    def open(self) -> None:
        self.close()
        self._settled = {}
        try:  # not only ImportError: a numpy built for another ABI raises ValueError from picamera2's imports
            from picamera2 import Picamera2
            from libcamera import controls as libcamera_controls
        except Exception as exc:
            raise SourceError(f"picamera2 is not importable ({type(exc).__name__}: {exc}); {_IMPORT_HELP}") from None
        try:
            camera = Picamera2(self.camera_num)
        except Exception as exc:  # IndexError for a camera number not connected, RuntimeError when busy
            raise SourceError(f"cannot open Pi camera {self.camera_num} ({type(exc).__name__}: {exc}): is it "
                              "connected and free? ('rpicam-hello --list-cameras' lists them)") from None
        try:
            self._configure(camera, Picamera2, libcamera_controls)
            camera.start()
        except Exception as exc:
            _close(camera)
            raise SourceError(f"cannot start Pi camera {self.camera_num}: {type(exc).__name__}: {exc}") from None
        self._camera = camera

    def _configure(self, camera: Any, picamera2_class: Any, libcamera_controls: Any) -> None:
        advertised = camera.camera_controls  # {name: (min, max, default)}
        ignored = {name: why for name in self.controls if (why := _missing(name, advertised))}
        applied = {name: value for name, value in self.controls.items() if name not in ignored}
        main = {"size": self.size, "format": RGB_IN_MEMORY}
        lores = self._lores_stream(picamera2_class)
        config = camera.create_video_configuration(
            main=main, lores=lores,
            controls={k: _libcamera_value(k, v, libcamera_controls) for k, v in applied.items()})
        limits = config["controls"].get("FrameDurationLimits")  # ours, or the video configuration's default
        exposure = applied.get("ExposureTime", 0)
        if limits and exposure > limits[1]:
            ignored["ExposureTime"] = (f"{exposure} µs is longer than the frame duration limit {limits[1]} µs, so "
                                       "the camera shortens it: set [camera] frame_duration_limits_us")
        camera.configure(config)
        self._lores = lores is not None
        self._timeout_s = CAPTURE_TIMEOUT_S + _FRAMES_PER_CAPTURE * (limits[1] / 1e6 if limits else 0)
        if ignored:
            log.warning("Pi camera %d: controls not applied: %s", self.camera_num,
                        "; ".join(f"{k}: {why}" for k, why in ignored.items()))
        self._report = {"camera_num": self.camera_num, "size": list(self.size),
                        "lores": list(lores["size"]) if lores else None,
                        "controls": {k: _plain(v) for k, v in applied.items()}, "ignored": ignored}

    def _lores_stream(self, picamera2_class: Any) -> dict[str, Any] | None:
        if self.lores_size is None:
            return None
        (w, h), (mw, mh) = self.lores_size, self.size
        platform = getattr(getattr(picamera2_class, "platform", None), "name", "")
        if platform != "PISP" or w % 2 or h % 2 or w > mw or h > mh or abs(w * mh - h * mw) > 0.01 * w * mh:
            return None
        return {"size": (w, h), "format": RGB_IN_MEMORY}

    def read(self) -> Frame:
        return self._capture(None)

    def read_after(self, since: float) -> Frame:
        return self._capture(int(since * 1e9))

    def _capture(self, flush_ns: int | None) -> Frame:
        camera = self._camera
        if camera is None:
            raise SourceError("Pi camera is not open")
        try:
            request = camera.capture_request(wait=self._timeout_s, flush=flush_ns)
        except TimeoutError:  # concurrent.futures.TimeoutError, what picamera2's Job.get_result raises
            _cancel_jobs(camera)
            raise SourceError(f"Pi camera {self.camera_num} gave no frame within {self._timeout_s:.1f} s (ribbon "
                              "cable loose, or the camera hung)") from None
        except Exception as exc:
            raise SourceError(f"Pi camera capture failed: {type(exc).__name__}: {exc}") from None
        try:
            image = request.make_array("main")
            small = request.make_array("lores") if self._lores else None
            metadata = request.get_metadata()
        except Exception as exc:
            raise SourceError(f"Pi camera capture failed: {type(exc).__name__}: {exc}") from None
        finally:
            request.release()
        self._settled = {k: _plain(metadata[k]) for k in SETTLED if k in metadata}
        stamp = metadata.get("SensorTimestamp")
        captured_at = time.time() - (time.monotonic_ns() - stamp) / 1e9 if stamp else time.time()
        self._count += 1
        return Frame(image, f"picamera2#{self._count}", captured_at, small)

    def describe(self) -> dict[str, Any]:
        return {**self._report, "settled": self._settled} if self._report else {}

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            _close(camera)


def _close(camera: Any) -> None:
    """Picamera2.close() stops the camera first; a failure to close must not hide why it is being closed."""
    try:
        camera.close()
    except Exception as exc:
        log.warning("closing the Pi camera failed: %s: %s", type(exc).__name__, exc)


def _cancel_jobs(camera: Any) -> None:
    """Without this the timed-out job stays queued (picamera2's advice before closing a camera that stopped).
    A frame that completes the job just after the timeout makes cancelling it raise InvalidStateError: the
    camera is closed next either way."""
    try:
        camera.cancel_all_and_flush()
    except Exception as exc:
        log.warning("cancelling the Pi camera's capture failed: %s: %s", type(exc).__name__, exc)


def _missing(name: str, advertised: dict[str, tuple]) -> str:
    """Why the camera cannot take this control ("" when it can): picamera2 raises on a control it lacks. Values
    are not checked against the camera's ranges: libcamera clamps them, and the state shows what it settled on."""
    if name in advertised:
        return ""
    autofocus = name.startswith(("Af", "Lens"))
    return "this camera does not have it" + (" (no autofocus on this module?)" if autofocus else "")


def _libcamera_value(name: str, value: Any, libcamera_controls: Any) -> Any:
    return getattr(getattr(libcamera_controls, ENUM_CONTROLS[name]), value) if name in ENUM_CONTROLS else value


def _plain(value: Any) -> Any:
    """A JSON value for the state: tuples as lists, enum members by name."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
