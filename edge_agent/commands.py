"""The agent's commands (MQTT ``cmd/<name>``, later the web page and Home Assistant): validate, then hand the
main loop a job.

Why here and not in the loop: a command arrives on another thread. It is checked there (so a bad one is refused
at once, naming the problem), but anything that changes the detector, the threshold or the store is done by the
main loop, which owns them, between two frames. The handler returns the job's `Future`; the sender replies when
it resolves, so a long retrain never holds up ``status``.

Threshold and rollback are refused with "retrain in progress" while a retrain collects or fits, and when a
retrain finished between the command's arrival and its turn on the loop: the operator sees the new model's
state and decides again, rather than having a change meant for the old detector land on the new one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.learn.fitting import recorded_threshold_settings
from edge_agent.learn.threshold import calibrate_threshold

#: Every command, with the arguments it takes (``request_id`` is allowed everywhere and echoed in the reply).
COMMANDS: dict[str, frozenset[str]] = {
    "retrain": frozenset({"n_images", "folder"}),
    "trigger": frozenset(),
    "threshold": frozenset({"sensitivity", "value"}),
    "rollback": frozenset(),
    "status": frozenset(),
}


@dataclass(frozen=True)
class ThresholdChange:
    """Exactly one of: a new sensitivity (recalibrated from the stored leave-one-out scores) or a fixed value."""

    sensitivity: float | None = None
    value: float | None = None

    def apply(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The detector's metadata with the new threshold (saved as a new file, so ``rollback`` undoes it)."""
        meta = dict(metadata)
        if self.value is not None:
            meta["threshold"] = calibrate_threshold(meta["loo_scores"], override=self.value)
            meta["threshold_override"] = meta["threshold"]
        else:
            assert self.sensitivity is not None
            s = recorded_threshold_settings(meta)
            meta["threshold"] = calibrate_threshold(meta["loo_scores"], self.sensitivity, s["quantile"], s["margin"],
                                                    method=s["method"])
            meta.update(sensitivity=self.sensitivity, threshold_override=None)
        return meta


def _number(args: dict[str, Any], key: str) -> float:
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def parse_threshold(args: dict[str, Any]) -> ThresholdChange:
    if ("sensitivity" in args) == ("value" in args):
        raise ValueError('give exactly one of {"sensitivity": 0..1} or {"value": threshold}')
    if "value" in args:
        value = _number(args, "value")
        if value < 0:
            raise ValueError(f"value must be >= 0, got {value}")
        return ThresholdChange(value=value)
    sensitivity = _number(args, "sensitivity")
    if not 0 <= sensitivity <= 1:
        raise ValueError(f"sensitivity must be between 0 and 1, got {sensitivity}")
    return ThresholdChange(sensitivity=sensitivity)


def parse_retrain(args: dict[str, Any], default_n: int) -> tuple[int, str | None]:
    n = args.get("n_images", default_n)
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"n_images must be an integer >= 2, got {n!r}")
    folder = args.get("folder")
    if folder is not None and (not isinstance(folder, str) or not Path(folder).is_dir()):
        raise ValueError(f"folder not found on the device: {folder}")
    return n, folder


class Commands:
    """``handler(name, args) -> result | Future``: what the MQTT publisher calls on its command thread."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "retrain": self._retrain, "trigger": self._trigger, "threshold": self._threshold,
            "rollback": self._rollback, "status": lambda args: agent.state(),
        }
        assert set(self._handlers) == set(COMMANDS)

    def __call__(self, name: str, args: dict[str, Any]) -> Any:
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
        unknown = set(args) - COMMANDS[name] - {"request_id"}
        if unknown:
            raise ValueError(f"unknown {name} arguments: {', '.join(sorted(unknown))}")
        return self._handlers[name](args)

    def _retrain(self, args: dict[str, Any]) -> Future:
        n, folder = parse_retrain(args, self.agent.config.retrain.n_images)
        return self.agent.request_retrain(n, folder)

    def _trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        self.agent.trigger()
        return {"queued": True}

    def _threshold(self, args: dict[str, Any]) -> Future:
        change = parse_threshold(args)
        return self.agent.submit_change(lambda: self.agent.set_threshold(change.apply))

    def _rollback(self, args: dict[str, Any]) -> Future:
        return self.agent.submit_change(self.agent.rollback)
