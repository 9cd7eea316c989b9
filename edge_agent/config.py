"""The agent's configuration: one TOML file, validated at start, every error naming the key.

Why typed sections: a camera runs unattended for months, so a typo (``mqtt.hots``) or a string where a number
belongs must stop the agent at start with a message that says what to fix, not surface as a crash at 3 a.m.
Secrets never live here: ``password_env``/``password_file`` name where the password comes from.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from edge_agent.capture.controls import AF_MODES
from edge_agent.capture.gpio_trigger import EDGES, PULLS
from edge_agent.capture.images import MAX_PIXELS
from edge_agent.capture.roi import Roi, RoiError
from edge_agent.deliver.homeassistant import DEFAULT_DISCOVERY_PREFIX
from edge_agent.deliver.spool import ON_FULL_POLICIES
from edge_agent.deliver.topics import check_node_id, check_topic_level
from edge_agent.embed.runtime.delegates import DELEGATES
from edge_agent.learn.augment import PRESETS, AugmentationPolicy
from edge_agent.learn.detectors import DEFAULT_DETECTOR, DETECTOR_NAMES, make_detector
from edge_agent.learn.fitting import FitSettings
from edge_agent.learn.threshold import (DEFAULT_METHOD, DEFAULT_SENSITIVITY, DEFAULT_TARGET_FALSE_REJECT,
                                        LEGACY_MARGIN, LEGACY_QUANTILE, MAX_TARGET_FALSE_REJECT, SENSITIVITY_RANGE,
                                        THRESHOLD_METHODS, legacy_target)
from edge_agent.learn.upright import UPRIGHT_MODES

log = logging.getLogger(__name__)

#: The most good images one retrain may take: frames are held in memory until the fit (a 5 MP RGB frame is 15 MB).
MAX_RETRAIN_IMAGES = 500

#: Frame sources `edge_agent.capture.factory.open_source` can open, and the trigger modes of the agent's loop.
SOURCE_KINDS = ("folder", "opencv", "picamera2")
TRIGGER_MODES = ("continuous", "mqtt")


class ConfigError(ValueError):
    """The configuration file is missing, not TOML, or has a bad key or value."""


@dataclass
class DeviceConfig:
    id: str = "edge-camera"
    state_dir: str = "/var/lib/edge-agent"


@dataclass
class ModelConfig:
    path: str = ""  # empty: the shipped default model
    delegate: str = "auto"
    threads: int = 2
    edgetpu_device: str = ""


@dataclass
class SourceConfig:
    kind: str = SOURCE_KINDS[0]
    path: str = ""  # folder
    watch: bool = False
    loop: bool = False
    uri: str = "0"  # opencv: device index, URL or file
    width: int = 0  # 0: the source's own size
    height: int = 0
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0
    max_pixels: int = MAX_PIXELS  # larger images are refused from their header, before decoding
    roi: list[float] = field(default_factory=list)  # [x, y, width, height], pixels or fractions; []: all
    camera_num: int = 0  # picamera2: which camera (a Pi 5 or a Compute Module has two connectors)


@dataclass
class CameraConfig:
    """Camera controls, applied at open (`edge_agent.capture.controls`, docs/camera.md); each default leaves the
    camera's own behaviour, so a configuration without ``[camera]`` sets none."""

    ae: bool = True  # automatic exposure and gain; false: exposure_us and analogue_gain are held
    exposure_us: int = 0  # 0: automatic
    analogue_gain: float = 0.0  # 0: automatic; else a multiplier >= 1
    awb: bool = True  # automatic white balance; false: colour_gains are held
    colour_gains: list[float] = field(default_factory=list)  # [red, blue]; []: automatic
    af_mode: str = AF_MODES[0]
    lens_position: float = -1.0  # dioptres (1 / distance in m; 0 = infinity); -1: not set
    frame_duration_limits_us: list[int] = field(default_factory=list)  # [min, max]; []: the source's own


@dataclass
class TriggerConfig:
    mode: str = TRIGGER_MODES[0]
    max_fps: float = 5.0
    # External trigger: a trigger not served within this time is dropped (and reported), never judged on a
    # later frame under its part id.
    max_age_s: float = 1.0


@dataclass
class DetectorConfig:
    name: str = DEFAULT_DETECTOR
    params: dict = field(default_factory=dict)
    upright: str = UPRIGHT_MODES[0]


@dataclass
class AugmentationConfig:
    preset: str = "object"
    factor: int = 10
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # AugmentationPolicy fields replacing the preset's

    def policy(self) -> AugmentationPolicy:
        base = PRESETS[self.preset].to_dict()
        return AugmentationPolicy.from_dict({**base, **self.overrides})


@dataclass
class ThresholdConfig:
    """-1 in ``target_false_reject``, ``quantile`` and ``margin``: not set. ``quantile`` and ``margin`` are the
    replaced rule's keys, still read so that an old file keeps its meaning (`target`)."""

    target_false_reject: float = -1.0
    sensitivity: float = DEFAULT_SENSITIVITY
    override: float = -1.0  # -1: calibrated from the good images; >= 0: this fixed threshold
    method: str = DEFAULT_METHOD
    quantile: float = -1.0
    margin: float = -1.0

    @property
    def legacy(self) -> bool:
        return self.quantile >= 0 or self.margin >= 0

    def target(self) -> float:
        """The share of good parts to reject: as set; else what an old file's quantile and margin meant
        (`edge_agent.learn.threshold.legacy_target`); else the default."""
        if self.target_false_reject > 0:
            return self.target_false_reject
        if self.legacy:
            return legacy_target(LEGACY_QUANTILE if self.quantile < 0 else self.quantile,
                                 LEGACY_MARGIN if self.margin < 0 else self.margin)
        return DEFAULT_TARGET_FALSE_REJECT


@dataclass
class RetrainConfig:
    n_images: int = 10
    timeout_s: float = 300.0
    keep: int = 5  # fitted detectors kept for rollback
    # Folders a retrain command may read good images from (and their subfolders); empty: none, frames only.
    folders: list[str] = field(default_factory=list)


@dataclass
class MqttConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "edge-inspect"
    username: str = ""
    password_env: str = ""
    password_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    keepalive: int = 30
    command_token_env: str = ""
    command_token_file: str = ""
    client_id: str = ""  # empty: <topic_prefix>-<device id>
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def password(self) -> str | None:
        """The broker password from the environment or a file (systemd credentials, docker secrets)."""
        return _secret("mqtt", "password", self.password_env, self.password_file)

    def command_token(self) -> str | None:
        """The shared secret every command must carry (``"token"``), for brokers whose ACLs cannot tell operators
        from viewers; ``None``: commands are not checked beyond the broker's own access control."""
        return _secret("mqtt", "command_token", self.command_token_env, self.command_token_file)


def _secret(section: str, key: str, env: str, file: str) -> str | None:
    """A secret named by ``[section] <key>_env`` (an environment variable) or ``<key>_file``; never in the config."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"[{section}] {key}_env names {env}, which is not set")
        return value
    if file:
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"[{section}] {key}_file {file}: {exc.strerror}") from None
    return None


def _long_secret(section: str, key: str, env: str, file: str) -> str | None:
    """`_secret`, refused when shorter than `MIN_WEB_PASSWORD` (a page password or a metrics token)."""
    value = _secret(section, key, env, file)
    if value is not None and len(value) < MIN_WEB_PASSWORD:
        what = key.rsplit("_", 1)[-1]  # "password", "token"
        raise ConfigError(f"[{section}] {key}_{'env' if env else 'file'}: the {what} is {len(value)} characters; "
                          f"use at least {MIN_WEB_PASSWORD}")
    return value


def _check_secrets_and_tls(section: str, settings: Any, secrets: Sequence[str], files: Sequence[str]) -> None:
    """One of ``<key>_env`` / ``<key>_file`` per secret, a client or server certificate with its key, and the
    files that are named present: the same rules for every section that holds them."""
    for key in secrets:
        if getattr(settings, f"{key}_env") and getattr(settings, f"{key}_file"):
            raise ConfigError(f"[{section}] give {key}_env or {key}_file, not both")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError(f"[{section}] tls_cert and tls_key must be given together")
    for key in files:
        path = getattr(settings, key)
        if path and not Path(path).is_file():
            raise ConfigError(f"[{section}] {key} file not found: {path}")


@dataclass
class SpoolConfig:
    max_messages: int = 100_000
    on_full: str = ON_FULL_POLICIES[0]


@dataclass
class AlertConfig:
    snapshot: bool = True
    heatmap: bool = True
    jpeg_quality: int = 80
    max_side: int = 640


@dataclass
class GpioConfig:
    """Line I/O on the Pi's header (BCM numbers, -1: off): `edge_agent.capture.gpio_trigger`, `edge_agent.deliver.gpio`."""

    trigger_pin: int = -1  # an edge takes one frame; needs [trigger] mode = "mqtt" (external trigger)
    trigger_edge: str = EDGES[0]
    trigger_pull: str = PULLS[0]
    trigger_debounce_ms: int = 10  # the same edge again within this time is ignored
    reject_pin: int = -1  # a pulse for each anomalous part
    reject_pulse_ms: int = 100
    reject_delay_ms: int = 0  # from the verdict to the pulse's start
    ready_pin: int = -1  # on while judging parts (fitted, source open)
    busy_pin: int = -1  # on while retraining
    active_high: bool = True  # the outputs: on = high (false: on = low)

    def pins(self) -> dict[str, int]:
        """The pins in use, by key."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name.endswith("_pin") and getattr(self, f.name) >= 0}


@dataclass
class ModbusConfig:
    """A Modbus TCP server for a PLC (`edge_agent.deliver.modbus`); off by default."""

    enabled: bool = False
    bind: str = "127.0.0.1"  # loopback unless set: Modbus has no authentication
    port: int = 5020  # 502 is the standard port but needs CAP_NET_BIND_SERVICE
    unit_id: int = 1


#: The web page's password is at least this long: it is the only thing between the plant network and the
#: threshold, and the login is slowed down (`edge_agent.deliver.web`), not locked.
MIN_WEB_PASSWORD = 8


@dataclass
class WebConfig:
    """The operator's web page (`edge_agent.deliver.web`, docs/web.md); off by default."""

    enabled: bool = False
    bind: str = "127.0.0.1"  # loopback unless set; "0.0.0.0" for the plant network
    port: int = 8080  # 0: any free port (logged)
    password_env: str = ""  # the login password, from the environment or a file, never from this file
    password_file: str = ""
    tls_cert: str = ""  # HTTPS with this certificate (PEM) and tls_key; or a reverse proxy in front
    tls_key: str = ""
    allowed_hosts: list[str] = field(default_factory=list)  # names the page answers to, beside IPs and localhost
    metrics_token_env: str = ""  # GET /metrics (Prometheus) with this read-only token; off when neither is set
    metrics_token_file: str = ""
    history: int = 500  # verdicts kept for the score chart
    gallery: int = 24  # rejected parts kept, with their pictures
    live_fps: float = 4.0  # the live view's most frames per second, per browser
    session_hours: float = 12.0  # a login lasts this long

    def password(self) -> str:
        """The login password: from ``password_env`` or ``password_file``, at least `MIN_WEB_PASSWORD` long."""
        value = _long_secret("web", "password", self.password_env, self.password_file)
        if value is None:
            raise ConfigError("[web] enabled = true needs password_env or password_file: the page changes the "
                              "threshold and retrains, so it never runs without a password")
        return value

    def metrics_token(self) -> str | None:
        """The token Prometheus sends for ``/metrics`` (docs/metrics.md); None: no metrics."""
        return _long_secret("web", "metrics_token", self.metrics_token_env, self.metrics_token_file)


@dataclass
class HomeAssistantConfig:
    """Home Assistant MQTT discovery (`edge_agent.deliver.homeassistant`, docs/homeassistant.md); off by default."""

    enabled: bool = False
    discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX  # Home Assistant's own default; change it only if HA's is changed


@dataclass
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    modbus: ModbusConfig = field(default_factory=ModbusConfig)
    web: WebConfig = field(default_factory=WebConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)

    @property
    def state_dir(self) -> Path:
        return Path(self.device.state_dir)


_CHOICES = {
    ("model", "delegate"): DELEGATES,
    ("source", "kind"): SOURCE_KINDS,
    ("trigger", "mode"): TRIGGER_MODES,
    ("detector", "name"): DETECTOR_NAMES,
    ("detector", "upright"): UPRIGHT_MODES,
    ("augmentation", "preset"): tuple(PRESETS),
    ("spool", "on_full"): ON_FULL_POLICIES,
    ("threshold", "method"): THRESHOLD_METHODS,
    ("gpio", "trigger_edge"): EDGES,
    ("gpio", "trigger_pull"): PULLS,
    ("camera", "af_mode"): AF_MODES,
}
_RANGES = {
    ("model", "threads"): (1, 64), ("trigger", "max_fps"): (0.01, 1000), ("trigger", "max_age_s"): (0.01, 60),
    ("augmentation", "factor"): (0, 100),
    ("threshold", "sensitivity"): SENSITIVITY_RANGE,
    ("threshold", "target_false_reject"): (-1, MAX_TARGET_FALSE_REJECT),
    ("threshold", "quantile"): (-1, 1), ("threshold", "margin"): (-1, 10),  # -1: not set (`_check_threshold`)
    ("retrain", "n_images"): (2, MAX_RETRAIN_IMAGES), ("retrain", "keep"): (1, 100), ("mqtt", "port"): (1, 65535),
    ("spool", "max_messages"): (10, 100_000_000), ("alerts", "jpeg_quality"): (10, 100),
    ("retrain", "timeout_s"): (1, 86_400), ("mqtt", "keepalive"): (5, 3600),
    ("source", "max_pixels"): (1_000_000, 2**30), ("source", "width"): (0, 16_384), ("source", "height"): (0, 16_384),
    ("source", "reopen_min_s"): (0.01, 3600), ("source", "reopen_max_s"): (0.01, 86_400),
    ("mqtt", "reconnect_min_s"): (0.01, 3600), ("mqtt", "reconnect_max_s"): (0.01, 86_400),
    ("alerts", "max_side"): (16, 8192), ("augmentation", "seed"): (0, 2**32 - 1),
    ("threshold", "override"): (-1, 1e12),
    # BCM numbers of the 40-pin header's GPIOs, 0..27; -1: not used.
    **{("gpio", f"{name}_pin"): (-1, 27) for name in ("trigger", "reject", "ready", "busy")},
    ("gpio", "trigger_debounce_ms"): (0, 1000), ("gpio", "reject_pulse_ms"): (1, 10_000),
    ("gpio", "reject_delay_ms"): (0, 60_000),
    ("modbus", "port"): (1, 65535), ("modbus", "unit_id"): (0, 255),
    ("source", "camera_num"): (0, 15), ("camera", "exposure_us"): (0, 10_000_000),
    ("camera", "analogue_gain"): (0, 64), ("camera", "lens_position"): (-1, 100),
    ("web", "port"): (0, 65535), ("web", "history"): (10, 10_000), ("web", "gallery"): (1, 200),
    ("web", "live_fps"): (0.1, 30), ("web", "session_hours"): (0.01, 24 * 30),
}
#: Each item of these lists: colour gains as libcamera bounds them; frame durations from 100 µs to 10 s.
_ITEM_RANGES = {("camera", "colour_gains"): (0.0, 32.0), ("camera", "frame_duration_limits_us"): (100, 10_000_000)}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
    elif typing.get_origin(hint) is list:
        item = typing.get_args(hint)[0]
        if item is str and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{where} must be a list of strings, got {value!r}")
        if item is int and (not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where} must be a list of integers, got {value!r}")
        if item is float:
            if not isinstance(value, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise ConfigError(f"{where} must be a list of numbers, got {value!r}")
            value = [float(v) for v in value]
    elif hint is dict or typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def _unknown(kind: str, where: str, name: str, valid: Sequence[str], shown: str = "{}") -> ConfigError:
    """``unknown key [mqtt] hots (did you mean host?); valid keys: ...``, for keys and sections alike."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {shown.format(close[0])}?)" if close else ""
    return ConfigError(f"unknown {kind} {where}{hint}; valid {kind}s: {', '.join(valid)}")


def _section(cls: type, data: Any, name: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise _unknown("key", f"[{name}] {key}", key, sorted(known))
        where = f"[{name}] {key}"
        value = _check_type(value, hints[key], where)
        if (name, key) in _CHOICES and value not in _CHOICES[(name, key)]:
            raise ConfigError(f"{where} is {value!r}; choose one of: {', '.join(_CHOICES[(name, key)])}")
        if (name, key) in _RANGES:
            lo, hi = _RANGES[(name, key)]
            if not lo <= value <= hi:
                raise ConfigError(f"{where} is {value}; it must be between {lo} and {hi}")
        if (name, key) in _ITEM_RANGES:
            lo, hi = _ITEM_RANGES[(name, key)]
            if len(value) not in (0, 2) or not all(lo <= v <= hi for v in value):
                raise ConfigError(f"{where} is {value}; it must be [] or two numbers between {lo} and {hi}")
        values[key] = value
    return cls(**values)


def config_from_dict(data: dict[str, Any]) -> Config:
    hints = typing.get_type_hints(Config)
    sections = {}
    for name, value in data.items():
        if name not in hints:
            raise _unknown("section", f"[{name}]", name, list(hints), shown="[{}]")
        sections[name] = _section(hints[name], value, name)
    config = Config(**sections)
    _cross_checks(config)
    return config


def _cross_checks(c: Config) -> None:
    if not c.device.state_dir:
        raise ConfigError("[device] state_dir must not be empty")
    if c.mqtt.enabled and not c.mqtt.host:
        raise ConfigError("[mqtt] host must not be empty (or set enabled = false)")
    for where, what, value, one_level in (("[device] id", "device_id", c.device.id, True),
                                          ("[mqtt] topic_prefix", "topic_prefix", c.mqtt.topic_prefix, False)):
        try:
            check_topic_level(what, value, one_level)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc} (no +, #, NUL{', /' if one_level else ''}; not empty)") from None
    _check_threshold(c.threshold)
    try:
        c.augmentation.policy()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[augmentation] overrides: {exc}") from None
    try:
        make_detector(c.detector.name, **c.detector.params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[detector] params for {c.detector.name}: {exc}") from None
    if c.source.kind == "folder" and not c.source.path:
        raise ConfigError("[source] path is required when kind = \"folder\"")
    if c.source.reopen_min_s <= 0 or c.source.reopen_max_s < c.source.reopen_min_s:
        raise ConfigError("[source] needs 0 < reopen_min_s <= reopen_max_s")
    try:
        Roi.parse(c.source.roi)
    except RoiError as exc:
        raise ConfigError(f"[source] roi: {exc}") from None
    if (c.source.width == 0) != (c.source.height == 0):
        raise ConfigError("[source] width and height must be given together")
    if c.mqtt.reconnect_min_s <= 0 or c.mqtt.reconnect_max_s < c.mqtt.reconnect_min_s:
        raise ConfigError("[mqtt] needs 0 < reconnect_min_s <= reconnect_max_s")
    _check_secrets_and_tls("mqtt", c.mqtt, ("password", "command_token"), ("tls_ca", "tls_cert", "tls_key"))
    _check_gpio(c)
    _check_camera(c.camera)
    _check_web(c.web)
    _check_homeassistant(c)


def _check_homeassistant(c: Config) -> None:
    ha = c.homeassistant
    try:
        check_topic_level("discovery_prefix", ha.discovery_prefix)
    except ValueError as exc:
        raise ConfigError(f"[homeassistant] discovery_prefix: {exc} (no +, #, NUL; not empty)") from None
    if not ha.enabled:
        return
    if not c.mqtt.enabled:
        raise ConfigError("[homeassistant] enabled = true needs [mqtt] enabled = true: Home Assistant finds the "
                          "camera through the broker")
    try:
        check_node_id(c.device.id)
    except ValueError as exc:
        raise ConfigError(f"[device] id: {exc}; with [homeassistant] enabled = true it is the node id in the "
                          "discovery topics (and, with the shipped broker ACL, the camera's user name)") from None
    if c.mqtt.command_token_env or c.mqtt.command_token_file:
        key = "command_token_env" if c.mqtt.command_token_env else "command_token_file"
        raise ConfigError(f"[homeassistant] enabled = true cannot be combined with [mqtt] {key}: Home Assistant's "
                          "buttons and slider would have to carry the token in their retained discovery payloads, "
                          "which every client allowed to subscribe can read. Remove the token and let the broker's "
                          "ACL decide who may publish on the command topics (docs/homeassistant.md, Security)")


#: A DNS name as a browser sends it in ``Host`` (no port, no scheme).
_HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.I)


def _check_web(w: WebConfig) -> None:
    """What can be checked without reading the secret (the password is read when the page starts)."""
    _check_secrets_and_tls("web", w, ("password", "metrics_token"), ("tls_cert", "tls_key"))
    if w.enabled and not (w.password_env or w.password_file):
        raise ConfigError("[web] enabled = true needs password_env or password_file (the page never runs without "
                          "a password; the password itself never goes in this file)")
    if not w.bind:
        raise ConfigError("[web] bind must not be empty (\"127.0.0.1\": this machine only; \"0.0.0.0\": every "
                          "network)")
    for name in w.allowed_hosts:
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(f"[web] allowed_hosts: {name!r} is not a host name (letters, digits, '-' and '.', "
                              "e.g. \"camera3.line1.example\"; IP addresses are always allowed)")


def _check_threshold(t: ThresholdConfig) -> None:
    if -1 < t.override < 0:
        raise ConfigError(f"[threshold] override is {t.override}: -1 (calibrate from the good images) or a "
                          "threshold >= 0")
    if t.target_false_reject != -1 and not 0 < t.target_false_reject < MAX_TARGET_FALSE_REJECT:
        raise ConfigError(f"[threshold] target_false_reject is {t.target_false_reject}: the share of good parts you "
                          f"accept to reject, above 0 and below {MAX_TARGET_FALSE_REJECT} (e.g. 0.005 = 1 in 200), "
                          "or -1 for the default")
    for key, value, low, high in (("quantile", t.quantile, 0.5, 1), ("margin", t.margin, 0, 10)):
        if value != -1 and not low <= value <= high:
            raise ConfigError(f"[threshold] {key} is {value}: between {low} and {high}, or -1; it is replaced by "
                              "target_false_reject, the share of good parts you accept to reject")
    if t.legacy:
        used = "ignored: target_false_reject is set" if t.target_false_reject > 0 else (
            f"read as target_false_reject = {t.target():g}")
        log.warning("[threshold] quantile and margin are replaced by target_false_reject (the share of good parts "
                    "you accept to reject) and are %s; remove them", used)


def _check_camera(cam: CameraConfig) -> None:
    """Settings that contradict each other, each named with what to change (docs/camera.md: locking a line)."""
    if cam.ae and (cam.exposure_us or cam.analogue_gain):
        raise ConfigError("[camera] exposure_us and analogue_gain are held only with ae = false (auto-exposure "
                          "would override them): set ae = false, or leave them 0")
    if not cam.ae and not (cam.exposure_us and cam.analogue_gain):
        raise ConfigError("[camera] ae = false needs exposure_us and analogue_gain: run with ae = true, read the "
                          "values the camera settled on from the state, and set them (docs/camera.md)")
    if 0 < cam.analogue_gain < 1:
        raise ConfigError(f"[camera] analogue_gain is {cam.analogue_gain}: 0 (automatic) or a gain of at least 1")
    if cam.awb == bool(cam.colour_gains):
        raise ConfigError("[camera] colour_gains = [red, blue] go with awb = false, and awb = false needs them "
                          f"(awb is {str(cam.awb).lower()}, colour_gains {cam.colour_gains})")
    if -1 < cam.lens_position < 0:
        raise ConfigError(f"[camera] lens_position is {cam.lens_position}: -1 (not set) or dioptres >= 0")
    if (cam.lens_position >= 0) != (cam.af_mode == "manual"):
        raise ConfigError(f"[camera] lens_position goes with af_mode = \"manual\", and manual needs it (af_mode is "
                          f"{cam.af_mode!r}, lens_position {cam.lens_position})")
    limits = cam.frame_duration_limits_us
    if limits and limits[0] > limits[1]:
        raise ConfigError(f"[camera] frame_duration_limits_us is {limits}: [min, max] with min <= max")
    if limits and cam.exposure_us > limits[1]:
        raise ConfigError(f"[camera] exposure_us = {cam.exposure_us} is longer than frame_duration_limits_us' "
                          f"max {limits[1]}: a frame cannot expose longer than it lasts; raise the max")


def _check_gpio(c: Config) -> None:
    g = c.gpio
    pins = g.pins()
    for key, pin in pins.items():
        others = [k for k, p in pins.items() if p == pin and k != key]
        if others:
            raise ConfigError(f"[gpio] {key} and {others[0]} are both GPIO{pin}: one pin, one use")
    if g.trigger_pin >= 0 and c.trigger.mode != "mqtt":
        raise ConfigError(f"[gpio] trigger_pin = {g.trigger_pin} needs [trigger] mode = \"mqtt\" (external trigger: "
                          f"one frame per edge or cmd/trigger message); it is {c.trigger.mode!r}")
    if g.trigger_pin in (2, 3) and g.trigger_pull != "up":
        raise ConfigError(f"[gpio] trigger_pin = {g.trigger_pin}: GPIO2 and GPIO3 have fixed pull-up resistors on "
                          f"the Pi (I2C), so trigger_pull must be \"up\", not {g.trigger_pull!r}")


def load_config(path: str | Path | None) -> Config:
    """Parse and validate a TOML file; ``None`` gives the defaults (which need a [source] path to run)."""
    if path is None:
        return Config(source=SourceConfig(path="."))
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (TOML must be): {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def fit_settings(config: Config) -> FitSettings:
    """The few-shot fit as the configuration describes it."""
    t = config.threshold
    return FitSettings(
        detector=config.detector.name, detector_params=dict(config.detector.params),
        policy=config.augmentation.policy(), factor=config.augmentation.factor, seed=config.augmentation.seed,
        target_false_reject=t.target(), sensitivity=t.sensitivity,
        threshold_override=t.override if t.override >= 0 else None, threshold_method=t.method,
        upright=config.detector.upright,
    )
