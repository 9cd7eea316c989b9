"""The payloads the agent sends: one builder per message, so every sink (MQTT, stdout, a web page, Home Assistant
discovery) sends and documents the same fields. The MQTT contract in docs/architecture.md lists them.

``SCHEMA_VERSION`` goes into every verdict, alert and state; a subscriber that sees a version it does not know
should stop trusting the fields, not guess. Adding a field keeps the version; renaming or removing one bumps it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

SCHEMA_VERSION = 1

#: The two values of a verdict's ``verdict`` field.
GOOD, ANOMALOUS = "good", "anomalous"
#: The values of the state's ``status`` field (`Agent.state`).
UNFITTED, RUNNING, RETRAINING = "unfitted", "running", "retraining"
STATUSES = (UNFITTED, RUNNING, RETRAINING)

#: Verdict fields an alert repeats (it points at its verdict by ``seq``).
_ALERT_FIELDS = ("schema", "device", "epoch", "seq", "frame", "captured_at", "score", "threshold", "model_id")
_ALERT_OPTIONAL = ("part_id",)


def now_iso() -> str:
    """UTC with milliseconds: the timestamps of every message."""
    return iso_from_epoch(dt.datetime.now(dt.timezone.utc).timestamp())


def iso_from_epoch(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds")


def to_json(obj: Any) -> bytes:
    """Compact JSON; numpy scalars and arrays (anything with ``tolist``) become plain numbers and lists."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return json.dumps(obj, separators=(",", ":"), default=default).encode()


def verdict_message(device: str, frame: str, captured_at: float, score: float, threshold: float, anomalous: bool,
                    model_id: str, detector_file: str | None, latency_ms: dict[str, float],
                    part_id: str | None = None) -> dict[str, Any]:
    """One inspected part. ``epoch`` and ``seq`` are added by the first sink: ``(epoch, seq)`` identifies it.
    ``part_id``, when the trigger carried one, ties the verdict to the part in the plant's own records. A score
    that is not finite goes out as ``null`` (JSON has no NaN; the part is anomalous, `is_anomalous`)."""
    verdict = {
        "schema": SCHEMA_VERSION, "device": device, "frame": frame, "captured_at": iso_from_epoch(captured_at),
        "published_at": now_iso(), "score": round(score, 5) if math.isfinite(score) else None, "threshold": round(threshold, 5),
        "verdict": ANOMALOUS if anomalous else GOOD, "model_id": model_id, "detector_file": detector_file,
        "latency_ms": {k: round(v, 2) for k, v in latency_ms.items()},
    }
    if part_id is not None:
        verdict["part_id"] = part_id
    return verdict


def alert_message(verdict: dict[str, Any], peak: tuple[int, int] | None = None) -> dict[str, Any]:
    """The alert for an anomalous verdict (after ``epoch`` and ``seq`` were set on it); ``peak``: where the heat
    map is highest, as ``{"x", "y"}`` in pixels of the full frame, for detectors that give heat maps."""
    alert = {k: verdict[k] for k in _ALERT_FIELDS + _ALERT_OPTIONAL if k in verdict}
    if peak is not None:
        alert["peak"] = {"x": peak[0], "y": peak[1]}
    return alert


def state_message(device: str, status: str, version: str, model: dict[str, Any], detector: dict[str, Any],
                  trigger: str, fps: float, counts: dict[str, Any], source: dict[str, Any],
                  sink_stats: dict[str, Any]) -> dict[str, Any]:
    """The retained state: what runs, how it was fitted, how it is doing.

    ``model``: model_id, backbone, precision, delegate. ``detector``: the fitted detector's metadata (empty when
    unfitted) plus ``detector_file``. ``counts``: inspected, good, rejected (since start) and reject_rate (over the
    last parts, see `edge_agent.agent.RECENT_PARTS`).
    """
    return {
        "schema": SCHEMA_VERSION, "device": device, "status": status, "version": version, **model,
        "detector": detector.get("detector"), "detector_file": detector.get("detector_file"),
        "fitted_at": detector.get("fitted_at"), "n_train": detector.get("n_train"),
        "threshold": detector.get("threshold"), "sensitivity": detector.get("sensitivity"),
        "target_false_reject": detector.get("effective_target_false_reject"),
        "threshold_guarantee": detector.get("threshold_guarantee"), "trigger": trigger,
        "fps": round(fps, 2), **counts, "source": source, "updated_at": now_iso(),
        **{f"spool_{k}": v for k, v in sink_stats.items() if k in ("queued", "dropped")},
    }


def event_message(device: str, **fields: Any) -> dict[str, Any]:
    """An event (``retrain/progress``, ``source/status``): the device, the time, and what happened."""
    return {"device": device, "at": now_iso(), **fields}


#: Home Assistant's MQTT button sends this bare word by default (``payload_press``); a command reads it as "no
#: arguments", like an empty payload, so a discovered button works without a template (docs/homeassistant.md).
BARE_PRESS = b"PRESS"


def command_args(payload: bytes) -> dict[str, Any]:
    """A command's arguments from its MQTT payload: a JSON object, or nothing (empty or `BARE_PRESS`); anything
    else is refused with a `ValueError` that says what is wrong."""
    if not payload.strip() or payload.strip() == BARE_PRESS:
        return {}
    try:
        args = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested beyond the parser's depth
        raise ValueError(f"payload is not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ValueError(f"payload must be a JSON object, got {type(args).__name__}")
    return args


def command_reply(args: dict[str, Any], result: Any = None, error: BaseException | str | None = None) -> dict[str, Any]:
    """``{"ok", "result"|"error", "request_id"}`` on ``cmd/<name>/result``: the request's id is echoed back."""
    if error is None:
        reply: dict[str, Any] = {"ok": True, "result": result}
    else:
        reply = {"ok": False, "error": error if isinstance(error, str) else f"{type(error).__name__}: {error}"}
    if "request_id" in args:
        reply["request_id"] = args["request_id"]
    return reply
