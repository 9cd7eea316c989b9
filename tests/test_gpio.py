"""Line I/O through gpiozero's own code with its mock pins: the trigger input, the reject pulse, ready and busy,
their configuration, and a real agent (shipped model, real images) judging one part per edge on the pin."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from gpiozero import Device, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from edge_agent.capture.gpio_trigger import GpioTrigger
from edge_agent.cli import build_agent, main, make_sink
from edge_agent.config import ConfigError, config_from_dict
from edge_agent.deliver.gpio import GpioSink
from edge_agent.deliver.sink import FanOut, Sink, leaves
from edge_agent.deliver.stdout import StdoutSink
from tests.conftest import RealSet
from tests.mqtt_broker import wait_until

REJECT, READY, BUSY, TRIGGER = 17, 27, 22, 4
TOL = 0.03  # s: timer and thread wake-up on a loaded CI machine


@pytest.fixture
def pins():
    """gpiozero's MockFactory as the pin factory, as gpiozero's own tests do; every pin fresh for each test."""
    before = Device.pin_factory
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = before


def anomalous(seq: int = 1) -> dict:
    return {"verdict": "anomalous", "seq": seq, "epoch": "e"}


def started(pins, **kwargs):
    """A started GpioSink and its reject pin, with the pin's history cleared of the set-up."""
    sink = GpioSink(**kwargs)
    sink.start()
    pin = pins.pin(REJECT)
    pin.clear_states()
    return sink, pin


def changes(pin) -> list[tuple[float, bool]]:
    """The pin's changes after the first entry: (seconds since the change before, new state)."""
    return [(s.timestamp, s.state) for s in pin.states[1:]]


def test_an_anomalous_verdict_gives_one_pulse_of_the_configured_length_after_the_delay(pins):
    sink, pin = started(pins, reject_pin=REJECT, reject_pulse_ms=150, reject_delay_ms=200)
    t0 = time.perf_counter()
    assert sink.publish_verdict(anomalous(7)) == 7  # numbered by the first sink; this one numbers nothing
    assert time.perf_counter() - t0 < 0.005  # the loop is not held up by the pulse
    time.sleep(0.5)
    states = changes(pin)
    assert [s for _, s in states] == [True, False]
    assert states[0][0] == pytest.approx(0.2, abs=TOL) and states[1][0] == pytest.approx(0.15, abs=TOL)
    pin.assert_states_and_times([(0.0, False), (0.2, True), (0.15, False)])
    assert sink.stats()["pulses"] == 1
    sink.stop()


def test_a_good_verdict_gives_no_pulse(pins):
    sink, pin = started(pins, reject_pin=REJECT, reject_pulse_ms=20)
    sink.publish_verdict({"verdict": "good", "seq": 1})
    time.sleep(0.1)
    assert changes(pin) == [] and not pin.state
    sink.stop()


def test_active_low_outputs_idle_high_and_pulse_low(pins):
    sink = GpioSink(reject_pin=REJECT, reject_pulse_ms=50, ready_pin=READY, active_high=False)
    sink.start()
    pin = pins.pin(REJECT)
    assert pin.state and pins.pin(READY).state  # off = high
    pin.clear_states()
    sink.publish_verdict(anomalous())
    time.sleep(0.15)
    assert [s for _, s in changes(pin)] == [False, True]
    assert changes(pin)[1][0] == pytest.approx(0.05, abs=TOL)
    sink.stop()


def test_parts_faster_than_the_delay_keep_their_own_pulses_in_order(pins):
    """Three anomalous parts 100 ms apart with the gate 250 ms down the line: three 40 ms pulses, 100 ms apart."""
    sink, pin = started(pins, reject_pin=REJECT, reject_pulse_ms=40, reject_delay_ms=250)
    for seq in (1, 2, 3):
        sink.publish_verdict(anomalous(seq))
        time.sleep(0.1)
    time.sleep(0.4)
    pin.assert_states_and_times([(0.0, False), (0.25, True), (0.04, False), (0.06, True), (0.04, False),
                                 (0.06, True), (0.04, False)])
    assert len(pin.states) == 7 and sink.stats()["pulses"] == 3
    sink.stop()


def test_overlapping_pulses_merge_into_one_until_the_last_ends(pins):
    sink, pin = started(pins, reject_pin=REJECT, reject_pulse_ms=150)
    first = time.monotonic()
    sink.publish_verdict(anomalous(1))
    time.sleep(0.05)
    second = time.monotonic() - first  # 0.05 s, more on a loaded machine: the pulse must last 0.15 s past it
    sink.publish_verdict(anomalous(2))  # while the first pulse is on: the gate stays on, no gap
    time.sleep(0.35)
    states = changes(pin)
    assert [s for _, s in states] == [True, False]
    assert states[1][0] == pytest.approx(second + 0.15, abs=TOL)
    assert (sink.stats()["pulses"], sink.stats()["merged"]) == (1, 1)
    sink.stop()


def test_stop_sends_the_pulses_already_due_then_releases_the_pins(pins):
    sink, pin = started(pins, reject_pin=REJECT, reject_pulse_ms=50, reject_delay_ms=100)
    sink.publish_verdict(anomalous())
    sink.stop(timeout=2)  # the part is on its way to the gate: it is still rejected
    assert [s for _, s in changes(pin)] == [True, False]
    assert pin.function == "input"  # released
    assert sink.stats()["dropped"] == 0


def test_stop_out_of_time_cuts_the_pulse_and_leaves_the_gate_off(pins):
    sink = GpioSink(reject_pin=REJECT, reject_pulse_ms=5000)
    sink.start()
    pin = pins.pin(REJECT)
    sink.publish_verdict(anomalous(1))
    assert wait_until(lambda: pin.state, 2)
    sink.publish_verdict({**anomalous(2), "verdict": "anomalous"})
    t0 = time.monotonic()
    sink.stop(timeout=0.1)
    assert time.monotonic() - t0 < 1
    assert not pin.state and pin.function == "input"


def test_ready_and_busy_follow_the_state_and_the_source(pins):
    sink = GpioSink(ready_pin=READY, busy_pin=BUSY)
    ready, busy = pins.pin(READY), pins.pin(BUSY)
    assert isinstance(sink, Sink)
    sink.start()
    shown = []

    def state(status: str, source: str = "open") -> tuple[bool, bool]:
        sink.publish_state({"status": status, "source": {"source": "folder", "status": source}})
        return ready.state, busy.state

    assert state("unfitted") == (False, False)
    assert state("running") == (True, False)
    assert state("retraining") == (False, True)
    assert state("running") == (True, False)
    sink.publish_event("source/status", {"status": "failed", "error": "camera unplugged"})
    shown.append(ready.state)
    sink.publish_event("source/status", {"status": "open"})
    shown.append(ready.state)
    assert shown == [False, True]
    assert state("running", "failed") == (False, False)
    state("running")
    sink.publish_availability(False)
    assert (ready.state, busy.state) == (False, False)
    state("running")
    sink.stop()
    assert (ready.state, ready.function, busy.function) == (False, "input", "input")


def test_behind_a_fan_out_it_receives_numbered_verdicts(pins):
    out = io.StringIO()
    gpio = GpioSink(reject_pin=REJECT, reject_pulse_ms=10)
    fan = FanOut([StdoutSink(out), gpio])
    fan.start()
    assert [fan.publish_verdict({"verdict": v}) for v in ("good", "anomalous")] == [1, 2]
    assert wait_until(lambda: gpio.stats()["pulses"] == 1, 2)
    fan.stop()


# ---- the trigger input ----------------------------------------------------------------------------------------

def trigger(pins, **kwargs) -> tuple[GpioTrigger, list[float], object]:
    calls: list[float] = []
    t = GpioTrigger(TRIGGER, on_trigger=lambda: calls.append(time.monotonic()), **kwargs)
    return t, calls, pins.pin(TRIGGER)


def test_a_falling_edge_on_a_pulled_up_pin_triggers_once_and_the_rising_edge_does_not(pins):
    t, calls, pin = trigger(pins, edge="falling", pull="up", debounce_ms=0)
    assert pin.state  # pulled up
    pin.drive_low()
    pin.drive_high()
    assert calls == []  # not started: the agent is not running, edges are not kept for later
    t.start()
    pin.drive_low()
    assert len(calls) == 1
    pin.drive_high()
    assert len(calls) == 1
    pin.drive_low()
    assert len(calls) == 2
    t.stop()
    assert pin.function == "input" and t.device.closed
    pin.drive_high()
    pin.drive_low()
    assert len(calls) == 2


@pytest.mark.parametrize("pull", ["down", "none"])
def test_a_rising_edge_on_a_pulled_down_or_driven_pin(pins, pull):
    t, calls, pin = trigger(pins, edge="rising", pull=pull, debounce_ms=0)
    t.start()
    pin.drive_low()
    assert calls == []
    pin.drive_high()
    assert len(calls) == 1
    pin.drive_low()
    assert len(calls) == 1
    t.stop()


def test_a_falling_edge_on_a_pulled_down_pin_and_a_rising_one_on_a_pulled_up_pin(pins):
    t, calls, pin = trigger(pins, edge="falling", pull="down", debounce_ms=0)
    t.start()
    pin.drive_high()
    assert calls == []
    pin.drive_low()
    assert len(calls) == 1
    t.stop()
    t, calls, pin = trigger(pins, edge="rising", pull="up", debounce_ms=0)
    t.start()
    pin.drive_low()
    assert calls == []
    pin.drive_high()
    assert len(calls) == 1
    t.stop()


def test_contact_bounce_within_the_debounce_time_triggers_once(pins):
    t, calls, pin = trigger(pins, debounce_ms=50)
    t.start()
    for _ in range(5):  # a chattering contact: five falling edges within a few milliseconds
        pin.drive_low()
        pin.drive_high()
    assert len(calls) == 1 and t.ignored == 4
    time.sleep(0.08)
    pin.drive_low()
    assert len(calls) == 2
    assert t.stats()["triggers"] == 2
    t.stop()


def test_a_failing_trigger_is_logged_not_raised_into_gpiozero(pins, caplog):
    t = GpioTrigger(TRIGGER, debounce_ms=0, on_trigger=lambda: 1 / 0)
    t.start()
    pins.pin(TRIGGER).drive_low()
    assert "trigger failed" in caplog.text
    t.stop()


# ---- configuration and wiring ---------------------------------------------------------------------------------

def cfg(tmp_path: Path, gpio: dict, mode: str = "mqtt", **sections) -> dict:
    return {"source": {"path": str(tmp_path)}, "trigger": {"mode": mode}, "mqtt": {"enabled": False},
            "device": {"state_dir": str(tmp_path / "state")}, "gpio": gpio, **sections}


@pytest.mark.parametrize("key", ["trigger_pin", "reject_pin", "ready_pin", "busy_pin"])
def test_pins_are_bcm_0_to_27_or_minus_1(tmp_path, key):
    for pin in (-1, 0, 27):
        assert getattr(config_from_dict(cfg(tmp_path, {key: pin})).gpio, key) == pin
    for pin in (-2, 28, 40):
        with pytest.raises(ConfigError, match=rf"\[gpio\] {key} is {pin}; it must be between -1 and 27"):
            config_from_dict(cfg(tmp_path, {key: pin}))


@pytest.mark.parametrize("key, lo, hi", [("reject_pulse_ms", 1, 10_000), ("reject_delay_ms", 0, 60_000),
                                         ("trigger_debounce_ms", 0, 1000)])
def test_times_have_ranges(tmp_path, key, lo, hi):
    for value in (lo, hi):
        assert getattr(config_from_dict(cfg(tmp_path, {key: value})).gpio, key) == value
    for value in (lo - 1, hi + 1):
        with pytest.raises(ConfigError, match=rf"\[gpio\] {key} is {value}; it must be between {lo} and {hi}"):
            config_from_dict(cfg(tmp_path, {key: value}))


def test_a_trigger_pin_needs_the_external_trigger_mode(tmp_path):
    with pytest.raises(ConfigError, match=r'\[gpio\] trigger_pin = 17 needs \[trigger\] mode = "mqtt"'):
        config_from_dict(cfg(tmp_path, {"trigger_pin": 17}, mode="continuous"))
    assert config_from_dict(cfg(tmp_path, {"trigger_pin": 17})).gpio.trigger_pin == 17
    # The outputs work in either mode.
    assert config_from_dict(cfg(tmp_path, {"reject_pin": 17}, mode="continuous")).gpio.reject_pin == 17


def test_one_pin_one_use(tmp_path):
    with pytest.raises(ConfigError, match=r"\[gpio\] reject_pin and ready_pin are both GPIO5"):
        config_from_dict(cfg(tmp_path, {"reject_pin": 5, "ready_pin": 5}))


def test_gpio2_and_3_have_fixed_pull_ups(tmp_path):
    with pytest.raises(ConfigError, match=r'GPIO2 and GPIO3 have fixed pull-up.*"up", not \'down\''):
        config_from_dict(cfg(tmp_path, {"trigger_pin": 3, "trigger_pull": "down"}))
    assert config_from_dict(cfg(tmp_path, {"trigger_pin": 3})).gpio.trigger_pull == "up"


@pytest.mark.parametrize("key, value", [("trigger_edge", "both"), ("trigger_pull", "floating")])
def test_edge_and_pull_are_choices(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"\[gpio\] {key} is '{value}'; choose one of"):
        config_from_dict(cfg(tmp_path, {key: value}))


def test_make_sink_adds_line_io_only_for_the_pins_set(pins, tmp_path):
    assert isinstance(make_sink(config_from_dict(cfg(tmp_path, {}))), StdoutSink)
    sink = make_sink(config_from_dict(cfg(tmp_path, {"reject_pin": REJECT})))
    assert [type(s) for s in leaves(sink)] == [StdoutSink, GpioSink]
    sink.stop()
    sink = make_sink(config_from_dict(cfg(tmp_path, {"trigger_pin": TRIGGER, "busy_pin": BUSY})))
    assert [type(s) for s in leaves(sink)] == [StdoutSink, GpioSink, GpioTrigger]
    sink.stop()
    assert pins.pin(BUSY).function == "input" and pins.pin(TRIGGER).function == "input"


def test_a_pin_in_use_is_a_configuration_error_naming_it(pins, tmp_path):
    other = DigitalOutputDevice(REJECT)  # another program's relay on the same pin
    with pytest.raises(ConfigError, match=r"\[gpio\] cannot open a pin: GPIOPinInUse: .*GPIO17"):
        make_sink(config_from_dict(cfg(tmp_path, {"reject_pin": REJECT})))
    other.close()


# ---- a real agent: one edge, one part judged ------------------------------------------------------------------

def test_an_edge_on_the_trigger_pin_judges_one_part_and_rejects_it_end_to_end(pins, tmp_path, real_set: RealSet):
    """The shipped model, real images, `edge-agent fit`, then `build_agent` with the [gpio] section: each falling
    edge on the trigger pin gives exactly one verdict, and each anomalous one a reject pulse."""
    good, frames = real_set.line_folders(tmp_path)
    state = tmp_path / "state"
    gpio = {"trigger_pin": TRIGGER, "trigger_edge": "falling", "trigger_pull": "up", "trigger_debounce_ms": 20,
            "reject_pin": REJECT, "reject_pulse_ms": 50, "reject_delay_ms": 30, "ready_pin": READY, "busy_pin": BUSY}
    toml = tmp_path / "agent.toml"
    toml.write_text(f'''[device]\nstate_dir = "{state}"\n[model]\ndelegate = "cpu"\n
[source]\nkind = "folder"\npath = "{frames}"\n[trigger]\nmode = "mqtt"\n[mqtt]\nenabled = false\n
[detector]\nname = "mahalanobis"\n[augmentation]\nfactor = 2\n
[gpio]\n''' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in gpio.items()))
    assert main(["--config", str(toml), "fit", "--images", str(good)]) == 0

    from edge_agent.config import load_config

    agent = build_agent(load_config(toml))
    stdout = leaves(agent.sink)[0]
    stdout.stream = io.StringIO()
    trigger_pin, reject = pins.pin(TRIGGER), pins.pin(REJECT)
    reject.clear_states()
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: pins.pin(READY).state, 10), "ready never came on"
        verdicts = []
        for n in (1, 2):
            trigger_pin.drive_low()  # the light barrier sees a part
            assert wait_until(lambda: agent.inspected == n, 30)
            trigger_pin.drive_high()  # the part leaves: the other edge takes nothing
            time.sleep(0.3)  # longer than the delay and the pulse
            assert agent.inspected == n  # exactly one verdict for the edge
            lines = [json.loads(line) for line in stdout.stream.getvalue().splitlines()]
            verdicts = [m for m in lines if m["topic"] == "verdict"]
            assert len(verdicts) == n
        pulses = [s for s in reject.states[1:] if s.state]
        assert [v["frame"] for v in verdicts] == ["a_defect" + real_set.defects[0].suffix,
                                                  "b_good" + real_set.test_good[0].suffix]
        assert verdicts[0]["verdict"] == "anomalous", verdicts[0]  # a clearly defective part
        assert len(pulses) == sum(v["verdict"] == "anomalous" for v in verdicts)
        assert all(s.timestamp == pytest.approx(0.05, abs=TOL) for s in reject.states[1:] if not s.state)
        assert not pins.pin(BUSY).state
    finally:
        agent.stop()
        thread.join(30)
    assert not thread.is_alive()
    for pin in (TRIGGER, REJECT, READY, BUSY):  # every pin released, the outputs off
        assert pins.pin(pin).function == "input"
    assert not pins.pin(READY).state and not reject.state
