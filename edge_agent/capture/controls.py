"""Camera controls (``[camera]`` in the configuration): what each key means to picamera2 and to OpenCV.

Why one module: the same key must mean the same thing on a Pi camera and on a USB camera, and the difference
(what OpenCV cannot express) must be said once, where the mapping is. The defaults live in
`edge_agent.config.CameraConfig`: each means "the camera's own behaviour", so a configuration without
``[camera]`` sets no control at all. docs/camera.md explains the keys and how to lock them on a line.

picamera2 names are libcamera's controls as picamera2 0.3.36 takes them (``set_controls`` or a configuration's
``controls=``): AeEnable, ExposureTime (µs), AnalogueGain, AwbEnable, ColourGains (red, blue), AfMode and
AfTrigger (``libcamera.controls.AfModeEnum`` / ``AfTriggerEnum``), LensPosition (dioptres), FrameDurationLimits
(µs, min and max). picamera2 itself sets libcamera's ExposureTimeMode and AnalogueGainMode to manual when an
exposure or a gain is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.config import CameraConfig

#: ``[camera] af_mode``: "default" leaves the camera's mode (a Camera Module 3 starts in manual, at its default
#: lens position); "auto" scans once when the camera starts, then holds; "continuous" keeps refocusing.
AF_MODES = ("default", "manual", "auto", "continuous")

#: The members of libcamera's enums that picamera2 wants for AfMode and AfTrigger, by name.
_AF_MODE_NAMES = {"manual": "Manual", "auto": "Auto", "continuous": "Continuous"}
ENUM_CONTROLS = {"AfMode": "AfModeEnum", "AfTrigger": "AfTriggerEnum"}

#: OpenCV's V4L2 back-end takes CAP_PROP_EXPOSURE as V4L2's exposure_time_absolute, in units of 100 µs.
V4L2_EXPOSURE_UNIT_US = 100
#: V4L2's exposure_auto values as OpenCV's V4L2 back-end passes them through: 1 manual, 3 aperture priority (auto).
V4L2_EXPOSURE_MANUAL = 1


def picamera2_controls(camera: CameraConfig) -> dict[str, Any]:
    """The controls the configuration sets, by picamera2 name; enum controls by member name (see ENUM_CONTROLS).

    Only what differs from the defaults is set, so an old configuration starts the camera exactly as before.
    """
    out: dict[str, Any] = {}
    if not camera.ae:
        out.update(AeEnable=False, ExposureTime=camera.exposure_us, AnalogueGain=camera.analogue_gain)
    if not camera.awb:
        out.update(AwbEnable=False, ColourGains=tuple(camera.colour_gains))
    if camera.af_mode != "default":
        out["AfMode"] = _AF_MODE_NAMES[camera.af_mode]
    if camera.af_mode == "auto":
        out["AfTrigger"] = "Start"  # Auto alone waits for a trigger: scan once at start, then hold
    if camera.lens_position >= 0:
        out["LensPosition"] = camera.lens_position
    if camera.frame_duration_limits_us:
        out["FrameDurationLimits"] = tuple(camera.frame_duration_limits_us)
    return out


def opencv_properties(camera: CameraConfig) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """``([(CAP_PROP name, value), ...] in the order to set them, {key: why it is not set})``.

    The order matters on V4L2: a manual exposure is refused while auto-exposure is on, a focus while
    autofocus is. Values are what OpenCV's V4L2 back-end expects; other back-ends may read them differently,
    which the source reports when ``set`` returns False.
    """
    props: list[tuple[str, float]] = []
    ignored: dict[str, str] = {}
    if not camera.ae:
        props += [("CAP_PROP_AUTO_EXPOSURE", V4L2_EXPOSURE_MANUAL),
                  ("CAP_PROP_EXPOSURE", camera.exposure_us / V4L2_EXPOSURE_UNIT_US)]
        ignored["analogue_gain"] = "CAP_PROP_GAIN is in the driver's own units, not a multiplier (set it with v4l2-ctl)"
    if not camera.awb:
        props.append(("CAP_PROP_AUTO_WB", 0))
        ignored["colour_gains"] = ("OpenCV has no red/blue gain multipliers (its white-balance properties are in "
                                   "the driver's units): white balance is off, at the driver's current setting")
    if camera.af_mode in ("manual", "continuous"):
        props.append(("CAP_PROP_AUTOFOCUS", int(camera.af_mode == "continuous")))
    elif camera.af_mode == "auto":
        ignored["af_mode"] = "'auto' (scan once, then hold) has no OpenCV equivalent: use 'continuous' or 'manual'"
    if camera.lens_position >= 0:
        ignored["lens_position"] = "CAP_PROP_FOCUS is in the driver's own units, not dioptres (set it with v4l2-ctl)"
    if camera.frame_duration_limits_us:
        # V4L2 takes one frame interval: the longest duration allowed, which bounds the exposure as the limits do.
        props.append(("CAP_PROP_FPS", 1e6 / camera.frame_duration_limits_us[1]))
    return props, ignored
