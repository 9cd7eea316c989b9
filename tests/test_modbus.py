"""The PLC interface: a real pymodbus client on loopback against the Modbus sink, and against a real agent (shipped
model, real images) built from a [modbus] configuration: registers before and after a fit, the trigger coil
taking one part, the refusals a PLC can get, and the port's life cycle."""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge_agent.cli import build_agent, make_sink
from edge_agent.config import ConfigError, config_from_dict
from edge_agent.deliver.modbus import (AT_THRESHOLD, MAP_VERSION, N_REGISTERS, REGISTERS, TRIGGER_COIL, ModbusSink,
                                       scaled_score)
from edge_agent.deliver.sink import leaves
from tests.conftest import ROOT, RealSet
from tests.mqtt_broker import wait_until

UNIT = 1
ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, GATEWAY_NO_RESPONSE = 0x01, 0x02, 0x0B


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(port: int) -> ModbusTcpClient:
    c = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert c.connect(), f"no Modbus server on port {port}"
    return c


def read(c: ModbusTcpClient, function: str = "read_input_registers") -> dict[str, int]:
    """The whole map in one request (a consistent snapshot), decoded as a PLC would: 32-bit values high word
    first."""
    response = getattr(c, function)(0, count=N_REGISTERS, device_id=UNIT)
    assert not response.isError(), response
    words = response.registers
    return {r.name: (words[r.address] << 16 | words[r.address + 1]) if r.words == 2 else words[r.address]
            for r in REGISTERS}


def exception_code(response) -> int | None:
    return getattr(response, "exception_code", None) if response.isError() else None


# ---- the map and its scale ------------------------------------------------------------------------------------

def test_the_documented_register_table_is_the_map_in_code():
    """docs/modbus.md's table, row by row: | input register(s) | holding register(s) | `name` | meaning |."""
    rows = re.findall(r"^\| (\d{5})(?:\.\.(\d{5}))? \| (\d{5})(?:\.\.\d{5})? \| `(\w+)` \| (.+?) \|$",
                      (ROOT / "docs" / "modbus.md").read_text(), re.M)
    documented = [(int(first) - 30001, int(last or first) - int(first) + 1, int(holding) - 40001, name, meaning)
                  for first, last, holding, name, meaning in rows]
    assert documented == [(r.address, r.words, r.address, r.name, r.meaning) for r in REGISTERS]


@pytest.mark.parametrize("score, threshold, anomalous, expected", [
    (1.0, 2.0, False, 500), (2.0, 2.0, False, 999), (2.00001, 2.0, True, 1000), (3.0, 2.0, True, 1500),
    (1e9, 2.0, True, 65535), (-1.0, 2.0, False, 0),
    (1.9999999, 2.0, True, 1000),  # the published score rounded down to the threshold: the verdict wins
    (0.5, 0.0, True, 65535), (-0.5, 0.0, False, 0),  # [threshold] override = 0: every part anomalous
])
def test_the_scaled_score_is_per_mille_of_the_threshold_and_never_contradicts_the_verdict(
        score, threshold, anomalous, expected):
    assert scaled_score(score, threshold, anomalous) == expected
    assert (scaled_score(score, threshold, anomalous) >= AT_THRESHOLD) == anomalous


# ---- the sink alone -------------------------------------------------------------------------------------------

@pytest.fixture
def triggers() -> list[int]:
    return []


@pytest.fixture
def sink(triggers):
    """On a free port; its trigger calls append to ``triggers``."""
    s = ModbusSink("127.0.0.1", 0, UNIT, on_trigger=lambda: triggers.append(1))
    yield s
    s.stop()


def test_registers_follow_state_and_verdicts_in_input_and_holding_registers(sink):
    c = client(sink.address[1])
    before = read(c)
    assert before == {**before, "status": 0, "ready": 0, "busy": 0, "seq": 0, "verdict": 0,
                      "map_version": MAP_VERSION}
    sink.publish_state({"status": "running", "source": {"status": "open"}, "inspected": 3, "good": 2,
                        "rejected": 1, "reject_rate": 0.3333})
    sink.publish_verdict({"seq": 70_000, "verdict": "anomalous", "score": 3.0, "threshold": 2.0})
    after = read(c)
    assert after == {"status": 1, "ready": 1, "busy": 0, "heartbeat": before["heartbeat"] + 2, "seq": 70_000,
                     "verdict": 2, "score": 1500, "inspected": 4, "good": 2, "rejected": 2, "reject_rate": 333,
                     "map_version": MAP_VERSION}
    assert c.read_input_registers(4, count=2, device_id=UNIT).registers == [1, 70_000 - 65_536]  # high word first
    assert read(c, "read_holding_registers") == after  # FC3 for PLCs that read only holding registers
    sink.publish_event("source/status", {"status": "failed"})
    assert read(c)["ready"] == 0
    sink.publish_state({"status": "retraining", "source": {"status": "open"}})
    assert read(c)["busy"] == 1 and read(c)["ready"] == 0 and read(c)["status"] == 2
    c.close()


def test_what_a_plc_cannot_do_gets_an_exception_response_and_the_server_keeps_serving(sink, triggers):
    c = client(sink.address[1])
    assert exception_code(c.write_register(0, 5, device_id=UNIT)) == ILLEGAL_ADDRESS  # read-only
    past_the_map = c.read_input_registers(N_REGISTERS, count=1, device_id=UNIT)
    assert exception_code(past_the_map) == ILLEGAL_ADDRESS
    assert exception_code(c.write_coil(TRIGGER_COIL + 1, True, device_id=UNIT)) == ILLEGAL_ADDRESS  # one coil
    assert exception_code(c.read_discrete_inputs(0, count=1, device_id=UNIT)) == ILLEGAL_ADDRESS
    assert exception_code(c.read_input_registers(0, count=1, device_id=UNIT + 1)) == GATEWAY_NO_RESPONSE
    assert exception_code(c.write_coil(TRIGGER_COIL, True, device_id=UNIT)) == ILLEGAL_FUNCTION  # not started
    assert triggers == [] and sink.stats()["refused"] == 1
    assert read(c)["map_version"] == MAP_VERSION
    c.close()


def test_each_write_of_1_on_the_coil_triggers_once_and_the_coil_reads_0(sink, triggers):
    sink.start()
    c = client(sink.address[1])
    response = c.write_coil(TRIGGER_COIL, True, device_id=UNIT)
    assert not response.isError() and response.bits[0] is True  # the echo a PLC may check
    assert c.read_coils(TRIGGER_COIL, count=1, device_id=UNIT).bits[0] is False
    assert not c.write_coil(TRIGGER_COIL, True, device_id=UNIT).isError()  # no 0 needed in between
    assert not c.write_coil(TRIGGER_COIL, False, device_id=UNIT).isError()  # a 0 takes nothing
    assert not c.write_coils(TRIGGER_COIL, [True], device_id=UNIT).isError()  # FC15 as FC5
    assert triggers == [1, 1, 1] and sink.stats()["triggers"] == 3
    c.close()


def test_stop_closes_the_port_and_drops_connected_clients():
    s = ModbusSink("127.0.0.1", 0, UNIT)
    c = client(s.address[1])
    s.stop()
    with pytest.raises(ModbusException):
        c.read_input_registers(0, count=1, device_id=UNIT)
    assert not ModbusTcpClient("127.0.0.1", port=s.address[1], timeout=1, retries=0).connect()


# ---- configuration ----------------------------------------------------------------------------------------------

def cfg(tmp_path: Path, port: int, mode: str = "mqtt", frames: Path | None = None) -> dict:
    return {"device": {"state_dir": str(tmp_path / "state")}, "model": {"delegate": "cpu"},
            "source": {"kind": "folder", "path": str(frames or tmp_path)}, "trigger": {"mode": mode},
            "mqtt": {"enabled": False}, "detector": {"name": "mahalanobis"}, "augmentation": {"factor": 2},
            "modbus": {"enabled": True, "port": port, "unit_id": UNIT}}


def test_a_port_in_use_is_a_configuration_error_naming_it(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as other:  # another program on the port
        port = other.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"\[modbus\] cannot listen on 127\.0\.0\.1:{port}: Address "
                                              r"already in use.*set \[modbus\] port"):
            make_sink(config_from_dict(cfg(tmp_path, port)))


def test_without_pymodbus_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymodbus", None)
    with pytest.raises(ConfigError, match=r"pymodbus cannot be used.*pip install 'edge-inspect\[modbus\]'"):
        make_sink(config_from_dict(cfg(tmp_path, free_port())))


# ---- a real agent ---------------------------------------------------------------------------------------------

def running(config: dict) -> tuple:
    agent = build_agent(config_from_dict(config))
    stdout = leaves(agent.sink)[0]
    stdout.stream = io.StringIO()
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, stdout, thread


def stopped(agent, thread) -> None:
    agent.stop()
    thread.join(30)
    assert not thread.is_alive()


def test_a_plc_reads_the_agent_and_the_coil_judges_one_part_end_to_end(tmp_path, real_set: RealSet):
    good, frames = real_set.line_folders(tmp_path)
    port = free_port()
    config = cfg(tmp_path, port, frames=frames)
    agent, stdout, thread = running(config)
    try:
        c = client(port)
        assert wait_until(lambda: read(c)["heartbeat"] > 0, 10)  # the loop's first state
        unfitted = read(c)
        assert (unfitted["status"], unfitted["ready"], unfitted["busy"], unfitted["seq"]) == (0, 0, 0, 0)

        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}"):  # a second agent on the same port
            make_sink(config_from_dict(config))

        agent.request_retrain(folder=str(good)).result(60)
        fitted = read(c)
        assert (fitted["status"], fitted["ready"], fitted["busy"]) == (1, 1, 0)

        for n in (1, 2):
            seq = read(c)["seq"]
            assert not c.write_coil(TRIGGER_COIL, True, device_id=UNIT).isError()
            assert wait_until(lambda: read(c)["seq"] != seq and agent.inspected == n, 30)
            registers = read(c)
            verdict = [json.loads(line) for line in stdout.stream.getvalue().splitlines()
                       if json.loads(line)["topic"] == "verdict"][-1]
            assert registers["seq"] == verdict["seq"]
            assert registers["verdict"] == {"good": 1, "anomalous": 2}[verdict["verdict"]]
            assert registers["score"] == pytest.approx(verdict["score"] / verdict["threshold"] * 1000, abs=1)
            assert (registers["score"] >= 1000) == (verdict["verdict"] == "anomalous")
            state = agent.state()
            assert [registers[k] for k in ("inspected", "good", "rejected")] == \
                   [state[k] for k in ("inspected", "good", "rejected")]
            if n == 1:
                assert verdict["verdict"] == "anomalous", verdict  # a clearly defective part
    finally:
        stopped(agent, thread)
    with pytest.raises(ModbusException):
        c.read_input_registers(0, count=1, device_id=UNIT)
    assert not ModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0).connect()


def test_the_coil_in_continuous_mode_is_refused_and_the_server_keeps_serving(tmp_path):
    port = free_port()
    agent, _, thread = running(cfg(tmp_path, port, mode="continuous"))
    try:
        c = client(port)
        assert wait_until(lambda: read(c)["heartbeat"] > 0, 10)
        assert exception_code(c.write_coil(TRIGGER_COIL, True, device_id=UNIT)) == ILLEGAL_FUNCTION
        assert read(c)["map_version"] == MAP_VERSION and thread.is_alive()
        c.close()
    finally:
        stopped(agent, thread)
