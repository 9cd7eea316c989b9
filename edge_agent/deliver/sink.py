"""Where verdicts go: one small interface (`Sink`) that every output implements, and `FanOut`, which hands the
same messages to several of them (MQTT, a local web page, GPIO...).

Why an interface: the agent's loop must not know what listens. A sink's methods are called on the main loop and
must return quickly: a sink that talks to something slow (a broker, a browser) queues or drops, never waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    def start(self) -> None:
        """Begin delivering (connect in the background, open a file...); returns at once."""

    def stop(self, timeout: float = 5) -> None:
        """Deliver what can be delivered within ``timeout``, then close."""

    def publish_availability(self, online: bool) -> None:
        """The agent is up and judging (``True``) or going away (``False``)."""

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        """Deliver one verdict. If it has no ``seq`` yet, number it: set ``epoch`` (new whenever numbering may
        restart) and the next ``seq`` on it, so that ``(epoch, seq)`` is never reused; return ``seq``."""

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        """An anomalous part, with the snapshot (JPEG, heat map drawn on it) when there is one."""

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        """Something that happened (``retrain/progress``, ``source/status``)."""

    def publish_state(self, state: dict[str, Any]) -> None:
        """The agent's current state; only the latest matters."""

    def publish_image(self, name: str, image_jpeg: bytes) -> None:
        """A picture that holds until the next one of that name (``retrain/images``: the current detector's
        training parts); only the latest matters."""

    def publish_frame(self, image: Any, verdict: dict[str, Any] | None) -> None:
        """The frame just judged (RGB array, the whole frame) with its verdict (``None``: taken for a retrain
        while unfitted). Only a live view wants it: keep a reference to the latest, drop the rest, never encode
        here."""

    def stats(self) -> dict[str, Any]:
        """``queued``, ``dropped`` (messages not delivered yet / given up) and ``connected``."""


@runtime_checkable
class CommandSource(Protocol):
    """An output that also brings commands in (the MQTT publisher): the agent's builder sets ``on_command``."""

    on_command: Callable[[str, dict[str, Any]], Any] | None


@runtime_checkable
class TriggerSource(Protocol):
    """An input that takes one frame per event (the trigger pin, the Modbus trigger coil): the agent's builder sets
    ``on_trigger`` (`edge_agent.agent.Agent.trigger`, safe to call from any thread)."""

    on_trigger: Callable[[], None] | None


class PartialSink:
    """The base of outputs that use only some of the messages (a pin, a PLC's registers): every `Sink` method,
    doing nothing, so that each output spells out only what it uses."""

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 5) -> None:
        pass

    def publish_availability(self, online: bool) -> None:
        pass

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        return verdict["seq"]  # numbered by the first sink of the `FanOut`

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        pass

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        pass

    def publish_state(self, state: dict[str, Any]) -> None:
        pass

    def publish_image(self, name: str, image_jpeg: bytes) -> None:
        pass

    def publish_frame(self, image: Any, verdict: dict[str, Any] | None) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"queued": 0, "dropped": 0, "connected": True}


def leaves(sink: Sink) -> list[Sink]:
    """The sinks behind ``sink`` (itself, or what a `FanOut` hands messages to, at any depth)."""
    if isinstance(sink, FanOut):
        return [leaf for inner in sink.sinks for leaf in leaves(inner)]
    return [sink]


class FanOut:
    """The same messages to several sinks. The first one numbers the verdicts (give the MQTT publisher first:
    its spool keeps ``seq`` increasing across restarts); the others receive them numbered.

    A sink other than the first that raises is logged and skipped for that message: one broken output must not
    starve the others. The first one's failure to number a verdict reaches the caller, which counts it.
    ``stats`` are the first sink's, as it is the one whose backlog counts.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        if not sinks:
            raise ValueError("FanOut needs at least one sink")
        self.sinks = list(sinks)

    def _each(self, method: str, *args: Any, first: bool = True) -> None:
        for sink in self.sinks if first else self.sinks[1:]:
            try:
                getattr(sink, method)(*args)
            except Exception:
                log.exception("sink %s: %s failed", type(sink).__name__, method)

    def start(self) -> None:
        self._each("start")

    def stop(self, timeout: float = 5) -> None:
        self._each("stop", timeout)

    def publish_availability(self, online: bool) -> None:
        self._each("publish_availability", online)

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        seq = self.sinks[0].publish_verdict(verdict)  # numbers it in place (epoch, seq); if it fails, the caller hears
        self._each("publish_verdict", verdict, first=False)
        return seq

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        self._each("publish_alert", alert, image_jpeg)

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        self._each("publish_event", name, payload)

    def publish_state(self, state: dict[str, Any]) -> None:
        self._each("publish_state", state)

    def publish_image(self, name: str, image_jpeg: bytes) -> None:
        self._each("publish_image", name, image_jpeg)

    def publish_frame(self, image: Any, verdict: dict[str, Any] | None) -> None:
        self._each("publish_frame", image, verdict)

    def stats(self) -> dict[str, Any]:
        return self.sinks[0].stats()
