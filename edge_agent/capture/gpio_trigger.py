"""The line's trigger input: an edge on a GPIO pin (a light barrier, a PLC output) takes one frame.

Why here: on a real line the part is under the camera when a sensor says so, not when an MQTT message arrives.
The pin calls ``on_trigger`` (the builder sets it to `edge_agent.agent.Agent.trigger`, which only queues the
trigger: safe from gpiozero's callback thread), so the loop's external-trigger mode (``[trigger] mode =
"mqtt"``) serves both the ``cmd/trigger`` message and this pin.

Debouncing is done here, not by gpiozero's ``bounce_time``: the first edge counts at once and the same edge
within ``debounce_ms`` after it is ignored (a lockout). lgpio, the Pi's pin library, implements ``bounce_time``
as a filter that reports an edge only once the level has been stable that long, which would add the debounce
time to every trigger; a lockout adds nothing, and it behaves the same with every pin library (gpiozero's mock
pins ignore ``bounce_time`` altogether).

Life cycle: the pin is opened when the object is built (a wrong or busy pin stops the agent at start), edges
count only between `start` and `stop`, and `stop` closes the pin. It has the `Sink` protocol's methods so that
the builder can put it beside the sinks: `Agent.run` starts and stops it with them, with no hook in the loop.

gpiozero is imported only here and in `edge_agent.deliver.gpio`: on Raspberry Pi OS it comes from apt
(``python3-gpiozero`` with ``python3-lgpio``; the virtual environment needs ``--system-site-packages``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.deliver.sink import PartialSink

log = logging.getLogger(__name__)

#: The edge that takes a frame, and the pin's pull resistor (``none``: the sensor drives the line both ways).
EDGES = ("falling", "rising")
PULLS = ("up", "down", "none")


class GpioTrigger(PartialSink):
    def __init__(self, pin: int, edge: str = "falling", pull: str = "up", debounce_ms: int = 10,
                 on_trigger: Callable[[], None] | None = None, pin_factory: Any = None) -> None:
        if edge not in EDGES or pull not in PULLS:
            raise ValueError(f"edge must be one of {EDGES} and pull one of {PULLS}, got {edge!r}, {pull!r}")
        from gpiozero import DigitalInputDevice

        self.edge, self.pull, self.debounce_s = edge, pull, debounce_ms / 1000
        self.on_trigger = on_trigger
        self.triggers = 0  # edges passed on
        self.ignored = 0  # edges within the debounce time of the one before
        self._last = -float("inf")
        self._lock = threading.Lock()
        self._armed = False
        pull_up = {"up": True, "down": False, "none": None}[pull]
        # A pulled-up line is active low (gpiozero's convention); a pulled-down or driven one active high.
        self.device = DigitalInputDevice(pin, pull_up=pull_up, active_state=True if pull_up is None else None,
                                         bounce_time=None, pin_factory=pin_factory)
        active_high = pull_up is not True
        event = "when_activated" if (edge == "rising") == active_high else "when_deactivated"
        setattr(self.device, event, self._edge)

    def _edge(self) -> None:
        """gpiozero's callback (its own thread on a Pi; the driving thread with mock pins)."""
        now = time.monotonic()
        with self._lock:
            if not self._armed:
                return
            if now - self._last < self.debounce_s:
                self.ignored += 1
                return
            self._last = now
            self.triggers += 1
            callback = self.on_trigger
        if callback is not None:
            try:
                callback()
            except Exception:  # raised in gpiozero's thread, where nobody would see it
                log.exception("trigger pin: the trigger failed")

    # ---- the life cycle it shares with the sinks ---------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._armed = True

    def stop(self, timeout: float = 5) -> None:
        with self._lock:
            self._armed = False
        self.device.close()

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "dropped": 0, "connected": not self.device.closed, "triggers": self.triggers,
                "ignored": self.ignored}
