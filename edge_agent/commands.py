"""The agent's commands (MQTT ``cmd/<name>``, later the web page and Home Assistant): validate, then hand the
main loop a job.

Why here and not in the loop: a command arrives on another thread. It is checked there (so a bad one is refused
at once, naming the problem), but anything that changes the detector, the threshold or the store is done by the
main loop, which owns them, between two frames. The handler returns the job's `Future`; the sender replies when
it resolves, so a long retrain never holds up ``status``.

Threshold and rollback are refused with "retrain in progress" while a retrain collects or fits, and when a
retrain finished between the command's arrival and its turn on the loop: the operator sees the new model's
state and decides again, rather than having a change meant for the old detector land on the new one.

Whoever can publish on the command topics can change what the camera passes, so (docs/security.md):
- a retrain reads folders only under ``[retrain] folders``, and a refusal does not say whether a path exists;
- ``n_images`` is bounded, and so is a fixed threshold: within a range of the good parts' own scores unless the
  command says ``"force": true``;
- with ``[mqtt] command_token_env``/``_file`` every command must carry ``"token"``, compared in constant time.
"""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config import MAX_RETRAIN_IMAGES
from edge_agent.learn.fitting import recorded_threshold_settings, set_threshold
from edge_agent.learn.threshold import MAX_TARGET_FALSE_REJECT, SENSITIVITY_RANGE

#: Every command, with the arguments it takes (``request_id`` and ``token`` are allowed everywhere).
COMMANDS: dict[str, frozenset[str]] = {
    "retrain": frozenset({"n_images", "folder"}),
    "trigger": frozenset({"part_id"}),
    "threshold": frozenset({"target_false_reject", "sensitivity", "value", "force"}),
    "rollback": frozenset(),
    "status": frozenset(),
}
_COMMON_ARGS = frozenset({"request_id", "token"})

#: A fixed threshold further than this factor below the smallest or above the largest leave-one-out score of
#: the good parts needs ``force``: 1e308 (every part passes) or 1e-9 (every part fails) are mistakes or attacks.
THRESHOLD_VALUE_SPAN = 100.0

#: A part id (from a PLC or a barcode reader, echoed in the verdict) is at most this long.
MAX_PART_ID = 64


@dataclass(frozen=True)
class ThresholdChange:
    """Exactly one of: a new false-reject target or sensitivity (recalibrated from the stored leave-one-out
    scores; the other keeps the value the threshold was last calibrated with) or a fixed value."""

    target_false_reject: float | None = None
    sensitivity: float | None = None
    value: float | None = None
    force: bool = False

    def apply(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """The detector's metadata with the new threshold (saved as a new file, so ``rollback`` undoes it)."""
        recorded = recorded_threshold_settings(metadata)
        target = metadata.get("target_false_reject", recorded["target_false_reject"])
        sensitivity = metadata.get("sensitivity", recorded["sensitivity"])
        if self.value is not None:
            scores = metadata["loo_scores"]
            low, high = min(scores) / THRESHOLD_VALUE_SPAN, max(scores) * THRESHOLD_VALUE_SPAN
            if not self.force and not low <= self.value <= high:
                raise ValueError(f"value {self.value:g} is far outside the good parts' scores ({min(scores):.4g} to "
                                 f"{max(scores):.4g}; allowed {low:.4g} to {high:.4g}): add \"force\": true to set it")
            return set_threshold(metadata, target, sensitivity, recorded["method"], self.value)
        return set_threshold(metadata, target if self.target_false_reject is None else self.target_false_reject,
                             sensitivity if self.sensitivity is None else self.sensitivity, recorded["method"], None)


def _number(args: dict[str, Any], key: str) -> float:
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def parse_threshold(args: dict[str, Any]) -> ThresholdChange:
    if sum(key in args for key in ("target_false_reject", "sensitivity", "value")) != 1:
        raise ValueError('give exactly one of {"target_false_reject": share of good parts to reject}, '
                         '{"sensitivity": 0..1} or {"value": threshold}')
    force = args.get("force", False)
    if not isinstance(force, bool):
        raise ValueError(f"force must be true or false, got {force!r}")
    if "value" in args:
        value = _number(args, "value")
        if value < 0:
            raise ValueError(f"value must be >= 0, got {value}")
        return ThresholdChange(value=value, force=force)
    if "target_false_reject" in args:
        target = _number(args, "target_false_reject")
        if not 0 < target < MAX_TARGET_FALSE_REJECT:
            raise ValueError(f"target_false_reject must be above 0 and below {MAX_TARGET_FALSE_REJECT} (a share of "
                             f"good parts, e.g. 0.01 = 1 %), got {target}")
        return ThresholdChange(target_false_reject=target)
    sensitivity = _number(args, "sensitivity")
    low, high = SENSITIVITY_RANGE
    if not low <= sensitivity <= high:
        raise ValueError(f"sensitivity must be between {low:g} and {high:g}, got {sensitivity}")
    return ThresholdChange(sensitivity=sensitivity)


def parse_part_id(args: dict[str, Any]) -> str | None:
    """The trigger's ``part_id``: printable text that a subscriber or a database can key on, or none."""
    part_id = args.get("part_id")
    if part_id is None:
        return None
    if (not isinstance(part_id, str) or not part_id.strip() or len(part_id) > MAX_PART_ID
            or not part_id.isprintable()):
        raise ValueError(f"part_id must be 1 to {MAX_PART_ID} printable characters, not only spaces, got "
                         f"{part_id!r:.80}")
    return part_id


def allowed_folder(folder: Any, roots: Sequence[str]) -> str:
    """``folder`` resolved (symlinks and ``..`` followed) if it lies under one of ``roots``.

    One message for "outside", "missing" and "not a folder": a refusal must not tell a stranger what exists.
    """
    refused = ValueError("folder is not an existing folder under [retrain] folders"
                         + ("" if roots else " (none is configured: retrain from folders is off)"))
    if not isinstance(folder, str) or not folder or "\0" in folder or not os.path.isabs(folder):
        raise ValueError("folder must be an absolute path")
    try:
        path = Path(folder).resolve(strict=True)
    except (OSError, RuntimeError):
        raise refused from None
    for root in roots:
        try:
            path.relative_to(Path(root).resolve())
        except ValueError:
            continue
        if path.is_dir():
            return str(path)
    raise refused


def parse_retrain(args: dict[str, Any], default_n: int, roots: Sequence[str]) -> tuple[int, str | None]:
    n = args.get("n_images", default_n)
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= MAX_RETRAIN_IMAGES:
        raise ValueError(f"n_images must be an integer from 2 to {MAX_RETRAIN_IMAGES}, got {n!r}")
    folder = args.get("folder")
    return n, None if folder is None else allowed_folder(folder, roots)


class Commands:
    """``handler(name, args) -> result | Future``: what the MQTT publisher calls on its command thread."""

    def __init__(self, agent: Agent, token: str | None = None) -> None:
        self.agent = agent
        self.token = token
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "retrain": self._retrain, "trigger": self._trigger, "threshold": self._threshold,
            "rollback": self._rollback, "status": lambda args: agent.state(),
        }
        assert set(self._handlers) == set(COMMANDS)

    def __call__(self, name: str, args: dict[str, Any]) -> Any:
        if self.token is not None:
            given = args.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.token.encode()):
                raise PermissionError("command refused: missing or wrong token")
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
        unknown = set(args) - COMMANDS[name] - _COMMON_ARGS
        if unknown:
            raise ValueError(f"unknown {name} arguments: {', '.join(sorted(unknown))}")
        return self._handlers[name](args)

    def _retrain(self, args: dict[str, Any]) -> Future:
        retrain = self.agent.config.retrain
        n, folder = parse_retrain(args, retrain.n_images, retrain.folders)
        return self.agent.request_retrain(n, folder)

    def _trigger(self, args: dict[str, Any]) -> dict[str, Any]:
        part_id = parse_part_id(args)
        self.agent.trigger(part_id)
        return {"queued": True, **({"part_id": part_id} if part_id else {})}

    def _threshold(self, args: dict[str, Any]) -> Future:
        change = parse_threshold(args)
        return self.agent.submit_change(lambda: self.agent.set_threshold(change.apply))

    def _rollback(self, args: dict[str, Any]) -> Future:
        return self.agent.submit_change(self.agent.rollback)
