"""The agent's TOML configuration: defaults, a full round trip, and an error naming the key for every mistake."""

from __future__ import annotations

import dataclasses
import logging
import re
import textwrap
import tomllib
import typing
from pathlib import Path

import pytest

from edge_agent.cli import make_sink
from edge_agent.learn.augment import PRESETS, AugmentationPolicy
from edge_agent.config import (
    Config,
    ConfigError,
    MqttConfig,
    SourceConfig,
    config_from_dict,
    fit_settings,
    load_config,
)
from edge_agent.learn.fitting import FitSettings, recorded_threshold_settings
from edge_agent.learn.threshold import DEFAULT_TARGET_FALSE_REJECT


def write_toml(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def minimal(**sections) -> dict:
    """A valid configuration dict (a folder source needs a path) plus the given sections."""
    data = {"source": {"path": "/frames"}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


# ---- defaults ----------------------------------------------------------------------------------------------


def test_no_file_gives_the_defaults():
    c = load_config(None)
    assert isinstance(c, Config)
    assert c.source.kind == "folder" and c.source.path == "."
    assert c.model.delegate == "auto" and c.model.threads == 2
    assert c.mqtt.host == "localhost" and c.mqtt.port == 1883 and c.mqtt.enabled is True
    assert c.detector.name == "combined"
    assert c.augmentation.preset == "object" and c.augmentation.factor == 10
    assert c.threshold.sensitivity == 0.5 and c.threshold.override < 0
    assert c.state_dir == Path("/var/lib/edge-agent")


def test_a_file_with_only_the_required_key_fills_in_every_default(tmp_path):
    c = load_config(write_toml(tmp_path, '[source]\npath = "/srv/frames"\n'))
    defaults = Config(source=SourceConfig(path="/srv/frames"))
    assert c == defaults
    assert c.mqtt.password() is None  # neither password_env nor password_file


def test_an_empty_file_is_refused_because_a_folder_source_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match=r"\[source\] path is required"):
        load_config(write_toml(tmp_path, ""))


# ---- a full valid file -------------------------------------------------------------------------------------

FULL = """\
[device]
id = "line3-cam2"
state_dir = "{state}"

[model]
path = "/opt/models/lite0"
delegate = "cpu"
threads = 4
edgetpu_device = "usb:0"

[source]
kind = "opencv"
uri = "rtsp://cam.local/stream"
width = 1280
height = 720
reopen_min_s = 0.5
reopen_max_s = 10

[trigger]
mode = "mqtt"
max_fps = 2.5

[detector]
name = "knn"
params = {{ k = 3 }}

[augmentation]
preset = "bottle"
factor = 4
seed = 7
overrides = {{ rotate_deg = 5.0, zoom = [0.9, 1.1] }}

[threshold]
target_false_reject = 0.02
sensitivity = 0.7
override = 12.5

[retrain]
n_images = 20
timeout_s = 120
keep = 3

[mqtt]
enabled = true
host = "broker.plant"
port = 8883
topic_prefix = "plant/line3"
username = "cam2"
password_env = "CAM2_PW"
tls_ca = "{ca}"
tls_cert = "{cert}"
tls_key = "{key}"
keepalive = 60

[spool]
max_messages = 5000
on_full = "drop-newest"

[alerts]
snapshot = false
heatmap = false
jpeg_quality = 90
max_side = 800
"""


@pytest.fixture
def full_file(tmp_path) -> Path:
    tls = {}
    for name in ("ca", "cert", "key"):
        p = tmp_path / f"{name}.pem"
        p.write_text("-----BEGIN-----\n")
        tls[name] = str(p)
    return write_toml(tmp_path, FULL.format(state=tmp_path / "state", **tls))


def test_full_file_sets_every_section(full_file, tmp_path):
    c = load_config(full_file)
    assert (c.device.id, c.device.state_dir) == ("line3-cam2", str(tmp_path / "state"))
    assert (c.model.path, c.model.delegate, c.model.threads, c.model.edgetpu_device) == (
        "/opt/models/lite0", "cpu", 4, "usb:0")
    assert (c.source.kind, c.source.uri, c.source.width, c.source.height) == (
        "opencv", "rtsp://cam.local/stream", 1280, 720)
    # An integer where a float belongs is accepted and stored as a float.
    assert c.source.reopen_max_s == 10.0 and isinstance(c.source.reopen_max_s, float)
    assert (c.trigger.mode, c.trigger.max_fps) == ("mqtt", 2.5)
    assert (c.detector.name, c.detector.params) == ("knn", {"k": 3})
    assert (c.augmentation.preset, c.augmentation.factor, c.augmentation.seed) == ("bottle", 4, 7)
    assert (c.threshold.target_false_reject, c.threshold.sensitivity, c.threshold.override) == (0.02, 0.7, 12.5)
    assert (c.retrain.n_images, c.retrain.timeout_s, c.retrain.keep) == (20, 120.0, 3)
    assert (c.mqtt.host, c.mqtt.port, c.mqtt.topic_prefix, c.mqtt.username, c.mqtt.keepalive) == (
        "broker.plant", 8883, "plant/line3", "cam2", 60)
    assert c.mqtt.tls_ca == str(tmp_path / "ca.pem")
    assert (c.spool.max_messages, c.spool.on_full) == (5000, "drop-newest")
    assert (c.alerts.snapshot, c.alerts.heatmap, c.alerts.jpeg_quality, c.alerts.max_side) == (False, False, 90, 800)
    assert c.state_dir == tmp_path / "state"


def test_full_file_round_trips_through_a_plain_dict(full_file):
    c = load_config(full_file)
    again = config_from_dict(dataclasses.asdict(c))
    assert again == c
    assert again is not c


def test_fit_settings_follow_the_file(full_file):
    c = load_config(full_file)
    s = fit_settings(c)
    assert isinstance(s, FitSettings)
    assert s.detector == "knn" and s.detector_params == {"k": 3}
    assert s.detector_params is not c.detector.params  # a copy: a fit cannot change the configuration
    assert s.factor == 4 and s.seed == 7
    assert (s.target_false_reject, s.sensitivity) == (0.02, 0.7)
    assert s.threshold_override == 12.5
    assert s.policy == dataclasses.replace(PRESETS["bottle"], rotate_deg=5.0, zoom=(0.9, 1.1))


def test_the_false_reject_target_defaults_and_is_validated_naming_the_key():
    assert fit_settings(config_from_dict(minimal())).target_false_reject == DEFAULT_TARGET_FALSE_REJECT
    assert fit_settings(config_from_dict(minimal(threshold={"target_false_reject": 0.01}))).target_false_reject == 0.01
    for value in (0.0, 0.5, -0.2):
        with pytest.raises(ConfigError, match=rf"\[threshold\] target_false_reject is {value}: the share of good"):
            config_from_dict(minimal(threshold={"target_false_reject": value}))
    with pytest.raises(ConfigError, match=r"\[threshold\] target_false_reject is 0.7; it must be between"):
        config_from_dict(minimal(threshold={"target_false_reject": 0.7}))


def test_an_old_threshold_section_still_loads_and_keeps_its_meaning(caplog):
    """quantile/margin from before target_false_reject: read with a warning that names the replacement; the fit
    settings equal what a detector saved under them records, so updating moves no threshold."""
    old = {"sensitivity": 0.5, "quantile": 0.99, "margin": 0.1, "method": "lognormal"}
    with caplog.at_level(logging.WARNING, logger="edge_agent.config"):
        settings = fit_settings(config_from_dict(minimal(threshold=old)))
    assert "replaced by target_false_reject" in caplog.text and "read as target_false_reject = 0.005" in caplog.text
    saved = {"loo_scores": [1.0, 2.0], "threshold": 3.0, "sensitivity": 0.5, "quantile": 0.99, "margin": 0.1,
             "threshold_method": "lognormal", "threshold_override": None, "threshold_settings": {**old, "override": None}}
    assert settings.threshold_settings() == recorded_threshold_settings(saved)
    assert fit_settings(config_from_dict(minimal(threshold={"quantile": 0.95}))).target_false_reject == 0.05
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_agent.config"):
        both = fit_settings(config_from_dict(minimal(threshold={"quantile": 0.95, "target_false_reject": 0.01})))
    assert both.target_false_reject == 0.01 and "ignored: target_false_reject is set" in caplog.text


def test_negative_threshold_override_means_calibrate():
    s = fit_settings(config_from_dict(minimal(threshold={"override": -1.0})))
    assert s.threshold_override is None
    s = fit_settings(config_from_dict(minimal(threshold={"override": 0})))
    assert s.threshold_override == 0.0


# ---- unknown names -----------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = write_toml(tmp_path, '[source]\npath = "x"\n[mqtt]\nhots = "broker"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "[mqtt] hots" in msg
    assert "did you mean host?" in msg
    assert "valid keys:" in msg and "keepalive" in msg


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key \[alerts\] zzzzzz; valid keys: .*jpeg_quality") as err:
        config_from_dict(minimal(alerts={"zzzzzz": 1}))
    assert "did you mean" not in str(err.value)


def test_unknown_section_suggests_the_close_one(tmp_path):
    path = write_toml(tmp_path, '[source]\npath = "x"\n[mqqt]\nhost = "broker"\n')
    with pytest.raises(ConfigError, match=r"unknown section \[mqqt\] \(did you mean \[mqtt\]\?\)"):
        load_config(path)


def test_a_section_that_is_not_a_table_is_named():
    with pytest.raises(ConfigError, match=r"\[mqtt\] must be a table"):
        config_from_dict({"source": {"path": "x"}, "mqtt": "localhost"})


# ---- types -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("mqtt", "port", "1883", r"\[mqtt\] port must be an integer, got '1883'"),  # string for int
        ("model", "threads", True, r"\[model\] threads must be an integer, got True"),  # bool for int
        ("source", "watch", 1, r"\[source\] watch must be true or false, got 1"),  # int for bool
        ("mqtt", "enabled", "yes", r"\[mqtt\] enabled must be true or false"),
        ("trigger", "max_fps", "fast", r"\[trigger\] max_fps must be a finite number"),
        ("trigger", "max_fps", False, r"\[trigger\] max_fps must be a finite number"),  # bool is not a number
        ("mqtt", "host", 5, r"\[mqtt\] host must be a string, got 5"),
        ("detector", "params", [1, 2], r"\[detector\] params must be a table"),
        ("augmentation", "overrides", "none", r"\[augmentation\] overrides must be a table"),
    ],
)
def test_wrong_types_name_the_key(section, key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(minimal(**{section: {key: value}}))


def test_wrong_type_in_a_file_names_file_and_key(tmp_path):
    path = write_toml(tmp_path, '[source]\npath = "x"\n[retrain]\nkeep = 2.5\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "[retrain] keep must be an integer, got 2.5" in str(err.value)


# ---- ranges and choices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("mqtt", "port", 0, r"\[mqtt\] port is 0; it must be between 1 and 65535"),
        ("mqtt", "port", 70000, r"\[mqtt\] port is 70000"),
        ("threshold", "sensitivity", 1.5, r"\[threshold\] sensitivity is 1.5; it must be between 0 and 1"),
        ("threshold", "quantile", 0.2, r"\[threshold\] quantile is 0.2"),
        ("model", "threads", 0, r"\[model\] threads is 0"),
        ("retrain", "n_images", 1, r"\[retrain\] n_images is 1; it must be between 2"),
        ("augmentation", "factor", 101, r"\[augmentation\] factor is 101"),
        ("alerts", "jpeg_quality", 5, r"\[alerts\] jpeg_quality is 5"),
        ("trigger", "max_fps", float("nan"), r"\[trigger\] max_fps must be a finite number, got nan"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(section, key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(minimal(**{section: {key: value}}))


def test_range_bounds_are_inclusive():
    c = config_from_dict(minimal(mqtt={"port": 65535}, threshold={"sensitivity": 0, "quantile": 1}))
    assert (c.mqtt.port, c.threshold.sensitivity, c.threshold.quantile) == (65535, 0.0, 1.0)


@pytest.mark.parametrize(
    "section, key, value, choices",
    [
        ("model", "delegate", "tpu", "cpu, gpu, edgetpu, auto"),
        ("source", "kind", "usb", "folder, opencv, picamera2"),
        ("trigger", "mode", "gpio", "continuous, mqtt"),
        ("detector", "name", "svm", "mahalanobis, mahalanobis-empirical, knn, padim, patch-knn, combined"),
        ("spool", "on_full", "block", "drop-oldest, drop-newest"),
        ("detector", "upright", "sideways", "auto, off"),
    ],
)
def test_invalid_choice_lists_the_valid_ones(section, key, value, choices):
    with pytest.raises(ConfigError) as err:
        config_from_dict(minimal(**{section: {key: value}}))
    msg = str(err.value)
    assert f"[{section}] {key} is {value!r}" in msg
    assert f"choose one of: {choices}" in msg


def test_upright_off_reaches_the_fit():
    assert fit_settings(config_from_dict(minimal(detector={"upright": "off"}))).upright == "off"
    assert fit_settings(config_from_dict(minimal())).upright == "auto"


def test_invalid_preset_lists_the_presets():
    with pytest.raises(ConfigError, match=r"\[augmentation\] preset is 'bottel'; choose one of: .*bottle"):
        config_from_dict(minimal(augmentation={"preset": "bottel"}))


# ---- files -------------------------------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write_toml(tmp_path, '[source]\npath = "unterminated\n', name="broken.toml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "is not valid TOML" in str(err.value)
    assert "line 2" in str(err.value)  # tomllib's position survives


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(path)


def test_load_config_accepts_a_string_path(tmp_path):
    path = write_toml(tmp_path, '[source]\npath = "x"\n[mqtt]\nport = 1884\n')
    assert load_config(str(path)).mqtt.port == 1884


# ---- cross-checks ------------------------------------------------------------------------------------------


def test_folder_source_without_path():
    with pytest.raises(ConfigError, match=r'\[source\] path is required when kind = "folder"'):
        config_from_dict({"source": {"kind": "folder"}})


def test_other_sources_need_no_path():
    assert config_from_dict({"source": {"kind": "picamera2"}}).source.kind == "picamera2"


@pytest.mark.parametrize("size", [{"width": 640}, {"height": 480}])
def test_width_and_height_go_together(size):
    with pytest.raises(ConfigError, match=r"\[source\] width and height must be given together"):
        config_from_dict(minimal(source=size))


@pytest.mark.parametrize("values", [{"reopen_min_s": 5, "reopen_max_s": 2}, {"reopen_min_s": 60, "reopen_max_s": 30}])
def test_reopen_backoff_must_be_ordered(values):
    with pytest.raises(ConfigError, match=r"\[source\] needs 0 < reopen_min_s <= reopen_max_s"):
        config_from_dict(minimal(source=values))


def test_tls_cert_without_key(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match=r"\[mqtt\] tls_cert and tls_key must be given together"):
        config_from_dict(minimal(mqtt={"tls_cert": str(cert)}))


def test_tls_ca_file_must_exist(tmp_path):
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match=r"\[mqtt\] tls_ca file not found: .*ca\.pem"):
        config_from_dict(minimal(mqtt={"tls_ca": str(missing)}))
    missing.write_text("x")
    assert config_from_dict(minimal(mqtt={"tls_ca": str(missing)})).mqtt.tls_ca == str(missing)


def test_password_env_and_file_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match=r"\[mqtt\] give password_env or password_file, not both"):
        config_from_dict(minimal(mqtt={"password_env": "PW", "password_file": str(tmp_path / "pw")}))


def test_cross_check_errors_from_a_file_name_the_file(tmp_path):
    path = write_toml(tmp_path, '[source]\nkind = "folder"\nwidth = 10\n')
    with pytest.raises(ConfigError, match=rf"{tmp_path.name}.*agent\.toml: \[source\] path is required"):
        load_config(path)


# ---- passwords ---------------------------------------------------------------------------------------------


def test_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDGE_TEST_MQTT_PW", "s3cret value")
    mqtt = config_from_dict(minimal(mqtt={"password_env": "EDGE_TEST_MQTT_PW"})).mqtt
    assert mqtt.password() == "s3cret value"


def test_password_env_that_is_not_set(monkeypatch):
    monkeypatch.delenv("EDGE_TEST_MQTT_PW", raising=False)
    mqtt = MqttConfig(password_env="EDGE_TEST_MQTT_PW")
    with pytest.raises(ConfigError, match=r"\[mqtt\] password_env names EDGE_TEST_MQTT_PW, which is not set"):
        mqtt.password()


def test_password_from_a_file_is_stripped(tmp_path):
    pw = tmp_path / "mqtt-password"
    pw.write_text("  hunter2\n")
    mqtt = config_from_dict(minimal(mqtt={"password_file": str(pw)})).mqtt
    assert mqtt.password() == "hunter2"


def test_missing_password_file_names_the_key(tmp_path):
    mqtt = MqttConfig(password_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"\[mqtt\] password_file .*missing: No such file"):
        mqtt.password()


# ---- augmentation ------------------------------------------------------------------------------------------


def test_preset_alone_gives_the_preset():
    c = config_from_dict(minimal(augmentation={"preset": "texture"}))
    assert c.augmentation.policy() == PRESETS["texture"]


def test_overrides_replace_only_the_named_fields(tmp_path):
    path = write_toml(tmp_path, """\
        [source]
        path = "x"
        [augmentation]
        preset = "bottle"
        overrides = { vflip = false, translate_px = 12, brightness_mul = [0.8, 1.2] }
        """)
    policy = load_config(path).augmentation.policy()
    assert isinstance(policy, AugmentationPolicy)
    expected = dataclasses.replace(PRESETS["bottle"], vflip=False, translate_px=12, brightness_mul=(0.8, 1.2))
    assert policy == expected
    # The preset's other choices are kept.
    assert policy.rot90 and policy.rotate_deg == PRESETS["bottle"].rotate_deg and policy.translate_ref_px == 380
    assert policy.brightness_mul == (0.8, 1.2)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"rotat_deg": 5}, r"unknown augmentation keys \['rotat_deg'\]"),
        ({"rotate_deg": 500}, r"rotate_deg"),
        ({"zoom": [1.2, 0.8]}, r"zoom"),
        ({"translate_px": 2.5}, r"translate_px"),
    ],
)
def test_bad_override_names_augmentation(overrides, expected):
    with pytest.raises(ConfigError) as err:
        config_from_dict(minimal(augmentation={"overrides": overrides}))
    msg = str(err.value)
    assert msg.startswith("[augmentation] overrides:")
    assert re.search(expected, msg), msg


# ---- file and parameter errors found after the first version ----------------------------------------------


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[device]\nid = "Kamera-Prüfstand"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


def test_a_directory_given_as_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config(tmp_path)


def test_detector_params_typo_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"\[detector\] params"):
        config_from_dict(minimal(detector={"name": "knn", "params": {"kk": 3}}))


# ---- the shipped example ----------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "systemd" / "config.example.toml"


def _example_sections(text: str) -> dict[str, list[str]]:
    """The lines of each ``[section]`` of the example, commented-out ones included."""
    sections: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        header = re.match(r"\s*\[(\w+)\]\s*(#.*)?$", line)
        if header:
            name = header.group(1)
            sections.setdefault(name, [])
        elif name is not None:
            sections[name].append(line)
    return sections


def _commented_out(lines: list[str]) -> dict[str, object]:
    """Settings shown only as comments: ``# kind = "folder"; path = "/srv/incoming"  # prose``."""
    shown: dict[str, object] = {}
    for line in lines:
        text = line.strip()
        if not text.startswith("#"):
            continue
        for piece in text.lstrip("#").split(" #")[0].split(";"):
            try:
                shown.update(tomllib.loads(piece.strip()))
            except tomllib.TOMLDecodeError:
                pass  # prose, not a setting
    return shown


def test_the_example_config_shows_every_key_the_config_accepts():
    """systemd/config.example.toml says it lists every key: each field of each section of Config is set there or
    shown in a commented-out line, and nothing is shown that the config would refuse as unknown."""
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    sections = _example_sections(text)
    missing, unknown = [], []
    for section, cls in typing.get_type_hints(Config).items():
        accepted = {f.name for f in dataclasses.fields(cls)}
        lines = sections.get(section, [])
        shown = set(data.get(section, {})) | set(_commented_out(lines))
        missing += [f"[{section}] {key}" for key in sorted(accepted - shown)]
        unknown += [f"[{section}] {key}" for key in sorted(shown - accepted)]
    unknown += [f"[{name}]" for name in sorted(set(sections) - set(typing.get_type_hints(Config)))]
    assert not missing, f"keys the config accepts but {EXAMPLE.name} does not show: {missing}"
    assert not unknown, f"keys {EXAMPLE.name} shows but the config does not accept: {unknown}"


def test_the_example_config_loads_and_every_value_it_sets_arrives():
    config = load_config(EXAMPLE)
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert data, "the example sets nothing"
    for section, values in data.items():
        for key, value in values.items():
            assert getattr(getattr(config, section), key) == value, f"[{section}] {key}"


def _numeric_keys() -> list[tuple[str, str, type]]:
    import dataclasses
    import typing

    from edge_agent.config import Config

    out = []
    for name, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        out += [(name, f.name, hints[f.name]) for f in dataclasses.fields(cls) if hints[f.name] in (int, float)]
    return out


@pytest.mark.parametrize("section, key, kind", _numeric_keys(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_number_has_a_range(section: str, key: str, kind: type, tmp_path) -> None:
    """A camera left alone for months must not start with a typo'd 1e300 or a negative count (issue: reliability)."""
    from edge_agent.config import ConfigError, config_from_dict

    for value in ((10**15, -(10**15)) if kind is int else (1e300, -1e300)):
        with pytest.raises(ConfigError, match=rf"\[{section}\] {key}"):
            config_from_dict({"source": {"path": str(tmp_path)}, section: {key: value}})


@pytest.mark.parametrize("section, key, value, fragment", [
    ("threshold", "override", float("nan"), "finite"),
    ("threshold", "override", -5.0, "between -1"),
    ("threshold", "override", -0.5, "-1 (calibrate"),
    ("source", "reopen_min_s", float("nan"), "finite"),
    ("source", "width", -5, "between 0"),
    ("alerts", "max_side", 0, "between 16"),
    ("device", "state_dir", "", "must not be empty"),
    ("device", "id", "line/3", "[device] id"),
    ("mqtt", "host", "", "[mqtt] host must not be empty"),
    ("mqtt", "topic_prefix", "plant/#", "[mqtt] topic_prefix"),
])
def test_values_that_passed_validation_before_are_refused_naming_the_key(section, key, value, fragment, tmp_path):
    from edge_agent.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"source": {"path": str(tmp_path)}, section: {key: value}})
    assert fragment in str(err.value) and f"[{section}] {key}" in str(err.value), str(err.value)


def test_source_max_pixels_reaches_the_folder_source(tmp_path) -> None:
    """[source] max_pixels is what the watched folder enforces, before it decodes anything."""
    import cv2
    import numpy as np

    from edge_agent.capture.base import SourceError
    from edge_agent.capture.factory import open_source

    cv2.imwrite(str(tmp_path / "big.png"), np.full((1000, 1200, 3), 128, np.uint8))  # 1.2 MP
    small = config_from_dict({"source": {"path": str(tmp_path), "max_pixels": 1_000_000}})
    source = open_source(small.source)
    source.open()
    with pytest.raises(SourceError, match="1200 x 1000"):
        source.read()
    roomy = open_source(config_from_dict({"source": {"path": str(tmp_path)}}).source)
    roomy.open()
    assert roomy.read().image.shape == (1000, 1200, 3)


# ---- [homeassistant] ---------------------------------------------------------------------------------------


def test_home_assistant_is_off_by_default_with_its_own_prefix():
    c = config_from_dict(minimal())
    assert not c.homeassistant.enabled and c.homeassistant.discovery_prefix == "homeassistant"
    on = config_from_dict(minimal(homeassistant={"enabled": True, "discovery_prefix": "ha/plant"}))
    assert on.homeassistant.enabled and on.homeassistant.discovery_prefix == "ha/plant"


@pytest.mark.parametrize("mqtt, fragment", [
    ({"command_token_env": "EDGE_TOKEN"}, "[mqtt] command_token_env"),
    ({"command_token_file": "/etc/edge-agent/token"}, "[mqtt] command_token_file"),
    ({"enabled": False}, "[mqtt] enabled = true"),
])
def test_home_assistant_refuses_a_command_token_and_a_missing_broker(mqtt, fragment):
    """A token would have to sit in a retained discovery payload that every subscriber reads: refused, naming both."""
    with pytest.raises(ConfigError) as err:
        config_from_dict(minimal(mqtt=mqtt, homeassistant={"enabled": True}))
    assert "[homeassistant] enabled = true" in str(err.value) and fragment in str(err.value), str(err.value)
    config_from_dict(minimal(mqtt=mqtt))  # the same [mqtt] alone is fine


@pytest.mark.parametrize("prefix", ["", "home/#", "ha/+"])
def test_home_assistant_discovery_prefix_must_be_a_topic(prefix):
    with pytest.raises(ConfigError, match=r"\[homeassistant\] discovery_prefix"):
        config_from_dict(minimal(homeassistant={"discovery_prefix": prefix}))


@pytest.mark.parametrize("device_id", ["line 3.cam", "kamera_\u00fc", "cam.1"])
def test_home_assistant_refuses_a_device_id_it_cannot_take_as_node_id(device_id, tmp_path):
    """Not renamed on the fly: "line_3_cam" would miss the ACL's %u (the camera's user) and could be another camera.
    Without Home Assistant the same id is fine, all the way to the sink (it once failed there, unasked)."""
    config_from_dict(minimal(device={"id": "line_3-cam"}, homeassistant={"enabled": True}))
    with pytest.raises(ConfigError, match=r"\[device\] id: .*a-z A-Z 0-9 _ -.*\[homeassistant\] enabled"):
        config_from_dict(minimal(device={"id": device_id}, homeassistant={"enabled": True}))
    without = config_from_dict(minimal(device={"id": device_id, "state_dir": str(tmp_path)}))
    make_sink(without).stop()
