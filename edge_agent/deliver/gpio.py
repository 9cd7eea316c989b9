"""Verdicts to the line: a reject pulse for each anomalous part, and ready/busy lamps, on GPIO pins (gpiozero).

Why a sink: the reject gate is one more output of the same verdicts, beside MQTT. It sits after the first sink
of a `FanOut` and receives verdicts already numbered; it numbers nothing.

The pulse must never hold up the loop (sinks are called on it). `publish_verdict` only queues the pulse's start
time (now + ``delay_ms``); one thread (``gpio-reject``) drives the pin. One thread for the whole run, rather
than gpiozero's ``blink`` plus a timer per part: pulses keep their order when parts come faster than the delay
(several parts between the camera and the gate), and pulses that overlap merge into one that lasts until the
last one's end, so the gate never drops in the middle of a part it should reject.

``ready`` is on while the agent judges parts (state ``running``) and its source is not failed; ``busy`` while it
retrains. Both go off on a clean stop; after a crash or power loss the pins are left as the kernel leaves them,
so a PLC should also watch the ``availability`` topic or treat a ready that does not come back as a fault.

gpiozero is imported only when a pin is opened (`edge_agent.capture.gpio_trigger` says where it comes from).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from edge_agent.deliver.messages import ANOMALOUS
from edge_agent.deliver.sink import PartialSink

log = logging.getLogger(__name__)


class GpioSink(PartialSink):
    def __init__(self, reject_pin: int = -1, reject_pulse_ms: int = 100, reject_delay_ms: int = 0,
                 ready_pin: int = -1, busy_pin: int = -1, active_high: bool = True, pin_factory: Any = None) -> None:
        from gpiozero import DigitalOutputDevice

        self.pulse_s, self.delay_s = reject_pulse_ms / 1000, reject_delay_ms / 1000
        self._devices: list[Any] = []

        def output(pin: int) -> Any:
            if pin < 0:
                return None
            device = DigitalOutputDevice(pin, active_high=active_high, initial_value=False, pin_factory=pin_factory)
            self._devices.append(device)
            return device

        try:
            self.reject, self.ready, self.busy = output(reject_pin), output(ready_pin), output(busy_pin)
        except BaseException:
            self._close_devices()
            raise
        self.pulses = 0  # reject pulses started (merged ones count once)
        self.merged = 0  # parts whose pulse overlapped the one before and extended it
        self.cut = 0  # pulses still due when `stop` ran out of time
        self._due: collections.deque[float] = collections.deque()  # start times (monotonic), in order
        self._cond = threading.Condition()
        self._closing = False  # no new pulses; the thread ends once the due ones are out
        self._abort = False  # stop now, the gate off
        self._thread: threading.Thread | None = None
        self._status = "unfitted"
        self._source_failed = False

    # ---- the reject gate ----------------------------------------------------------------------------------------
    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        if self.reject is not None and verdict.get("verdict") == ANOMALOUS:
            at = time.monotonic() + self.delay_s
            with self._cond:
                if not self._closing:
                    self._due.append(at)
                    self._cond.notify()
        return verdict["seq"]  # numbered by the first sink

    def _wait_until(self, at: float) -> bool:
        """Wait (holding the condition) until ``at``; False when aborted first."""
        while not self._abort:
            left = at - time.monotonic()
            if left <= 0:
                return True
            self._cond.wait(left)
        return False

    def _run(self) -> None:
        assert self.reject is not None
        with self._cond:
            while True:
                while not self._due and not self._closing:
                    self._cond.wait()
                if not self._due or not self._wait_until(self._due[0]):
                    return
                end = self._due.popleft() + self.pulse_s
                self.reject.on()
                self.pulses += 1
                while True:  # parts whose pulse starts before this one ends extend it
                    while self._due and self._due[0] <= end:
                        end = max(end, self._due.popleft() + self.pulse_s)
                        self.merged += 1
                    if not self._wait_until(end) or not self._due or self._due[0] > end:
                        break
                self.reject.off()
                if self._abort:
                    return

    # ---- ready and busy -----------------------------------------------------------------------------------------
    def _show(self) -> None:
        if self.ready is not None:
            self.ready.value = self._status == "running" and not self._source_failed
        if self.busy is not None:
            self.busy.value = self._status == "retraining"

    def publish_state(self, state: dict[str, Any]) -> None:
        self._status = state.get("status", "unfitted")
        self._source_failed = (state.get("source") or {}).get("status") == "failed"
        self._show()

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "source/status":  # at once: the state follows only every few seconds
            self._source_failed = payload.get("status") == "failed"
            self._show()

    def publish_availability(self, online: bool) -> None:
        if not online:
            self._status = "offline"
            self._show()

    # ---- life cycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.reject is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpio-reject", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        """Pulses already due still go out within ``timeout`` (the parts are on their way to the gate); then every
        pin goes off and is released."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                with self._cond:
                    self._abort = True
                    self.cut = len(self._due)
                    self._cond.notify()
                self._thread.join()
                log.warning("reject gate: %d pulse(s) still due when the agent stopped were not sent", self.cut)
        self._status = "stopped"
        self._close_devices()

    def _close_devices(self) -> None:
        while self._devices:
            device = self._devices.pop()
            try:
                device.off()
            finally:
                device.close()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            queued = len(self._due)
        return {"queued": queued, "dropped": self.cut, "connected": True, "pulses": self.pulses,
                "merged": self.merged}
