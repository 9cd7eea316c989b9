"""Verdicts and state for a PLC over Modbus TCP, and a coil that takes one frame ([modbus], docs/modbus.md).

Why a sink: a PLC polls registers, it does not subscribe to MQTT. The same messages every output receives keep a
small register image up to date; pymodbus serves it from its own thread (``modbus``, an asyncio loop), so a PLC
that polls fast, or a slow connection, never touches the inspection loop. The sink's ``publish_*`` methods, called
on the loop, only write the image under a lock; a read copies the registers it asks for under the same lock, so
one request (say FC4 on the whole block) gives a consistent snapshot: a seq with its own verdict and score.

The trigger coil calls ``on_trigger`` (the builder sets it to `edge_agent.agent.Agent.trigger`, which only
queues the trigger): nothing else from the Modbus thread reaches the agent. No coil starts a retrain: a retrain
needs the checks and the reply of the command path (`edge_agent.commands`: which frames, the token), which a coil
cannot carry; a PLC that needs one asks over MQTT or a shift-start timer signals the agent.

`REGISTERS` is the one owner of the addresses: docs/modbus.md's table is checked against it by a test.

pymodbus (>= 3.13: its ``SimDevice`` datastore with an ``action`` hook, what pymodbus 4 keeps) is imported only
when the server is built; it comes from pip (the ``modbus`` extra): Debian Bookworm's python3-pymodbus is 3.0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.deliver.messages import ANOMALOUS, GOOD
from edge_agent.deliver.sink import PartialSink

if TYPE_CHECKING:
    from pymodbus.constants import ExcCodes

log = logging.getLogger(__name__)

#: The first pymodbus whose SimDevice takes an ``action`` with the four separate blocks (tested: 3.13.1 to 3.16.1).
MIN_PYMODBUS = (3, 13, 1)
#: Bumped when an address moves or a meaning changes; a PLC can check it before trusting the rest.
MAP_VERSION = 1
#: The score register's value at the threshold (see `scaled_score`).
AT_THRESHOLD = 1000
STATUS_CODES = {"unfitted": 0, "running": 1, "retraining": 2, "stopping": 3}
VERDICT_CODES = {None: 0, GOOD: 1, ANOMALOUS: 2}
#: Coil address (0-based; 00001 in PLC numbering): writing 1 takes one frame.
TRIGGER_COIL = 0
_U16 = 0xFFFF
_READ_REGISTERS = (3, 4, 23)  # FC3 holding, FC4 input, FC23 read/write (its write part is refused: read-only)
_WRITE_COILS = (5, 15)
_READ_COILS, _READ_DISCRETE_INPUTS = 1, 2


@dataclass(frozen=True)
class Register:
    name: str
    address: int  # 0-based; the PLC's 30001 (input) / 40001 (holding) is address 0
    words: int  # 1, or 2 for a 32-bit value: high word first
    meaning: str


REGISTERS = (
    Register("status", 0, 1, "0 unfitted, 1 running, 2 retraining, 3 stopping"),
    Register("ready", 1, 1, "1 while the agent judges parts: fitted, not retraining, its source open"),
    Register("busy", 2, 1, "1 while it retrains"),
    Register("heartbeat", 3, 1, "+1 at each report of the inspection loop (verdict, state, event; a state at least "
                                "every 10 s, none while a retrain fits), 65535 then 0"),
    Register("seq", 4, 2, "seq of the last verdict (changes with each verdict; starts again at 1 when the "
                          "agent restarts with [mqtt] off)"),
    Register("verdict", 6, 1, "last verdict: 0 none yet, 1 good, 2 anomalous"),
    Register("score", 7, 1, "last score per mille of its threshold: 1000 at the threshold, anomalous iff >= 1000, "
                            "0..65535"),
    Register("inspected", 8, 2, "parts judged since the agent started"),
    Register("good", 10, 2, "of those, good"),
    Register("rejected", 12, 2, "of those, anomalous"),
    Register("reject_rate", 14, 1, "anomalous per mille of the last 100 parts, updated with each state (every "
                                   "10 s)"),
    Register("map_version", 15, 1, f"{MAP_VERSION}: this register map"),
)
_BY_NAME = {r.name: r for r in REGISTERS}
N_REGISTERS = REGISTERS[-1].address + REGISTERS[-1].words


def scaled_score(score: float, threshold: float, anomalous: bool) -> int:
    """The score per mille of the threshold, floored: 1000 is the threshold, so a PLC compares with a constant
    and need not follow the threshold (a retrain or a threshold command moves it); 0.1 % steps are finer than
    any decision a PLC makes on it, and 65535 (65x the threshold) is far past any doubt. Clamped so that the
    register and the verdict never disagree (anomalous iff >= 1000), also when rounding of the published score
    or a threshold <= 0 ([threshold] override) would put them on either side."""
    ratio = score / threshold if threshold > 0 else (math.inf if anomalous else 0.0)
    value = max(0, math.floor(min(ratio * AT_THRESHOLD, _U16)))
    return max(value, AT_THRESHOLD) if anomalous else min(value, AT_THRESHOLD - 1)


class ModbusSink(PartialSink):
    """The server listens from construction (a port in use stops the agent at start, with the port named) until
    `stop`; the coil triggers only between `start` and `stop`."""

    def __init__(self, bind: str = "127.0.0.1", port: int = 5020, unit_id: int = 1,
                 on_trigger: Callable[[], None] | None = None) -> None:
        _check_pymodbus()
        from pymodbus.constants import ExcCodes
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self.on_trigger = on_trigger
        self._codes = ExcCodes
        self.triggers = 0  # coil writes passed on
        self.refused = 0  # coil writes refused (not started, or the agent not in the external-trigger mode)
        self._lock = threading.Lock()
        self._image = [0] * N_REGISTERS
        self._image[_BY_NAME["map_version"].address] = MAP_VERSION
        self._status, self._source = "unfitted", "closed"
        self._armed = False
        self._unit_id, self._wrong_units = unit_id, 0

        def blocks() -> tuple[list[Any], ...]:
            return ([SimData(TRIGGER_COIL, values=False, datatype=DataType.BITS)],  # coils
                    [SimData(0, values=False, datatype=DataType.BITS)],  # discrete inputs: none, see `_access`
                    # holding and input registers: the same image, for PLCs that read only one kind
                    *([SimData(0, count=N_REGISTERS, values=0, datatype=DataType.REGISTERS, readonly=True)]
                      for _ in range(2)))

        devices = [SimDevice(unit_id, blocks(), action=self._access)]
        if unit_id != 0:  # id 0 is pymodbus's "any other unit": a PLC set to the wrong one hears so
            devices.append(SimDevice(0, blocks(), action=self._wrong_unit))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="modbus", daemon=True)
        self._thread.start()

        async def listen() -> Any:
            server = ModbusTcpServer(devices, address=(bind, port))
            await server.serve_forever(background=True)
            return server

        try:
            self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(timeout=10)
        except RuntimeError:  # pymodbus says only "could not start listen"; the socket layer says why
            self._end_loop()
            raise OSError(f"cannot listen on {bind}:{port}: {_why_not(bind, port)}") from None
        self.address: tuple[str, int] = self._server.transport.sockets[0].getsockname()[:2]
        log.info("Modbus TCP server on %s:%d, unit id %d", *self.address, unit_id)

    # ---- the Modbus thread ------------------------------------------------------------------------------------
    async def _access(self, function_code: int, start_address: int, address: int, count: int,
                      registers: list[int], values: list[int] | list[bool] | None) -> ExcCodes | None:
        """pymodbus's hook, called on every request before it reads or writes ``registers`` (its block, modified
        in place): reads get the image, a write of 1 on the trigger coil takes a frame."""
        if function_code in _READ_REGISTERS and values is None:
            end = min(address + count, N_REGISTERS)  # never past the image: the block's list must keep its length
            with self._lock:
                registers[address - start_address:end - start_address] = self._image[address:end]
        elif function_code == _READ_COILS:  # the coil is a command, not a state: it reads 0 once written
            registers[TRIGGER_COIL // 16 - start_address] &= ~(1 << TRIGGER_COIL % 16)
        elif function_code == _READ_DISCRETE_INPUTS:
            return self._codes.ILLEGAL_ADDRESS
        elif function_code in _WRITE_COILS and values is not None:
            if address != TRIGGER_COIL or len(values) != 1:
                return self._codes.ILLEGAL_ADDRESS
            if values[0]:
                return self._trigger()
        return None

    async def _wrong_unit(self, *_: Any) -> ExcCodes:
        """Exception 0B ("target device failed to respond"), what a gateway answers for a unit it does not
        have; logged once, not per poll."""
        self._wrong_units += 1
        if self._wrong_units == 1:
            log.warning("Modbus request for a unit id other than [modbus] unit_id = %d: answered with exception "
                        "0B; set the PLC's unit id to %d", self._unit_id, self._unit_id)
        return self._codes.GATEWAY_NO_RESPONSE

    def _trigger(self) -> ExcCodes | None:
        """None when the frame was asked for; else the exception code the PLC gets, counted and logged once."""
        callback = self.on_trigger if self._armed else None
        try:
            if callback is None:
                raise ValueError("the agent is not running")
            callback()
        except ValueError as exc:  # Agent.trigger: [trigger] mode is not "mqtt"
            self.refused += 1
            if self.refused == 1:
                log.warning("Modbus trigger coil written but refused (exception 01 to the PLC): %s", exc)
            return self._codes.ILLEGAL_FUNCTION  # "the server is in the wrong state for this request"
        self.triggers += 1
        return None

    # ---- the inspection loop: the register image --------------------------------------------------------------
    def _set(self, name: str, value: int) -> None:
        """Holding the lock. A 32-bit value high word first; values past the register's range wrap."""
        r = _BY_NAME[name]
        for i in range(r.words):
            self._image[r.address + i] = (value >> (16 * (r.words - 1 - i))) & _U16

    def _get(self, name: str) -> int:
        r = _BY_NAME[name]
        return sum(self._image[r.address + i] << (16 * (r.words - 1 - i)) for i in range(r.words))

    def _beat(self) -> None:
        self._set("heartbeat", self._get("heartbeat") + 1)

    def _show_status(self) -> None:
        self._set("status", STATUS_CODES.get(self._status, STATUS_CODES["stopping"]))
        self._set("ready", int(self._status == "running" and self._source == "open"))
        self._set("busy", int(self._status == "retraining"))

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        anomalous = verdict["verdict"] == ANOMALOUS
        with self._lock:
            self._set("seq", verdict["seq"])
            self._set("verdict", VERDICT_CODES[verdict["verdict"]])
            self._set("score", scaled_score(verdict["score"], verdict["threshold"], anomalous))
            # The agent counts after publishing: its next state says the same; these are ahead of it until then.
            self._set("inspected", self._get("inspected") + 1)
            self._set("rejected" if anomalous else "good", self._get("rejected" if anomalous else "good") + 1)
            self._beat()
        return verdict["seq"]  # numbered by the first sink

    def publish_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._status = state.get("status", "unfitted")
            self._source = (state.get("source") or {}).get("status", "closed")
            self._show_status()
            for name in ("inspected", "good", "rejected"):  # the agent's own counts win
                self._set(name, state.get(name) or 0)
            rate = state.get("reject_rate")
            self._set("reject_rate", 0 if rate is None else round(rate * 1000))
            self._beat()

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "source/status":  # at once: the state follows only every few seconds
            with self._lock:
                self._source = payload.get("status", "closed")
                self._show_status()
                self._beat()

    def publish_availability(self, online: bool) -> None:
        if not online:
            with self._lock:
                self._status = "stopping"
                self._show_status()

    # ---- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._armed = True

    def stop(self, timeout: float = 5) -> None:
        """Status 3 (stopping) for the PLC's last read, then the port closes and connected clients are dropped."""
        self._armed = False
        self.publish_availability(False)
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(timeout)
        except Exception:  # the port is closed with the loop below in any case
            log.exception("Modbus server: shutdown failed")
        self._end_loop(timeout)

    def _end_loop(self, timeout: float = 5) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "dropped": 0, "connected": not self._loop.is_closed(), "triggers": self.triggers,
                "refused": self.refused}


def _check_pymodbus() -> None:
    """An ImportError naming the version found when pymodbus is older than `MIN_PYMODBUS` (Debian's 3.0 is): its
    own error would be a TypeError from deep inside the datastore."""
    import pymodbus

    found = tuple(int(part) for part in re.findall(r"\d+", pymodbus.__version__)[:3])
    if found < MIN_PYMODBUS:
        raise ImportError(f"pymodbus {pymodbus.__version__} is too old; "
                          f"{'.'.join(map(str, MIN_PYMODBUS))} or later is needed")


def _why_not(bind: str, port: int) -> str:
    """Why the port cannot be listened on: the socket layer's own words (pymodbus keeps them in its log)."""
    try:
        with socket.create_server((bind, port)):
            return "pymodbus could not listen (see its log above)"
    except OSError as exc:
        return exc.strerror or str(exc)
