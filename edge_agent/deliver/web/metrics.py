"""Prometheus metrics, served by the web page's server as ``GET /metrics`` (docs/metrics.md).

Why written here and not with ``prometheus-client``: the agent already owns every figure (the counts, the fps,
the retrains, the spool are in its state; the broker's connection in the publisher's stats), so a registry would
be a second owner of each. Only what the state does not keep is gathered here: the score against the threshold
and each stage's time, as histograms (`VerdictStats`). The loop adds one verdict to them under a lock held for a
few microseconds; everything else (reading the state, formatting) runs on the server's thread at scrape time
(`render`), in the text exposition format 0.0.4.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from edge_agent.deliver.messages import ANOMALOUS, STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Buckets of score / threshold: a part is rejected above 1; the ones below show how close good parts come.
SCORE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0)
#: Buckets of a stage's time in seconds, from a Coral's embedding to a Pi 3's CPU one.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The smallest ratio of a rejected part: above the "not rejected" bucket, le="1.0".
_ABOVE_ONE = math.nextafter(1.0, math.inf)
_PREFIX = "edge_agent_"
#: The ``latency_ms`` key of the whole inspection: a histogram of its own, since summed with the stages it would
#: count each inspection twice.
_TOTAL = "total"
#: The state's fields that name what runs, as labels of ``edge_agent_info``.
_INFO_FIELDS = ("version", "model_id", "backbone", "precision", "delegate", "detector", "detector_file",
                "threshold_guarantee", "trigger")


class Histogram:
    """Counts per bucket (not cumulative) and the sum; the last count is above the last bucket."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        other = Histogram(self.buckets)
        other.counts, other.total = list(self.counts), self.total
        return other


class VerdictStats:
    """The histograms the loop adds each verdict to (`observe`, through the web sink's ``publish_verdict``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._score = Histogram(SCORE_BUCKETS)
        self._stages: dict[str, Histogram] = {}

    def observe(self, verdict: dict[str, Any]) -> None:
        """A part the detector could not score (``score`` null, judged anomalous) counts in the verdicts, not in
        the score histogram, whose sum one infinity would spoil for good.

        Which side of 1 a part lands on is the verdict's own decision: the message's score and threshold are
        rounded (`verdict_message`), so a part rejected just above the threshold can read as exactly 1 (the
        "not rejected" bucket), and a threshold below the rounding reads 0. The rounded ratio only places a part
        within its side; an unreadable one goes to the edge of its side."""
        score, threshold = verdict["score"], verdict["threshold"]
        with self._lock:
            if score is not None:
                ratio = score / threshold if threshold > 0 else 1.0
                self._score.observe(max(ratio, _ABOVE_ONE) if verdict["verdict"] == ANOMALOUS else ratio)
            for stage, ms in verdict.get("latency_ms", {}).items():
                histogram = self._stages.get(stage)
                if histogram is None:
                    histogram = self._stages[stage] = Histogram(LATENCY_BUCKETS_S)
                histogram.observe(ms / 1e3)

    def snapshot(self) -> tuple[Histogram, dict[str, Histogram]]:
        with self._lock:
            return self._score.copy(), {k: v.copy() for k, v in self._stages.items()}


def render(state: dict[str, Any], broker: dict[str, Any] | None, stats: VerdictStats) -> bytes:
    """The exposition text from the agent's state (``status``), the broker's stats (None: MQTT is off) and the
    histograms. A figure the state does not have yet (no retrain, no threshold before the first fit) is left out,
    not sent as zero."""
    out: list[str] = []
    add = _Writer(out)
    add.one("frames_total", "counter", "Frames inspected (each gets one verdict) since the agent started.",
            state.get("inspected"))
    add.family("verdicts_total", "counter", "Verdicts since the agent started, by result.",
               [({"verdict": "good"}, state.get("good")), ({"verdict": "anomalous"}, state.get("rejected"))])
    add.one("missed_triggers_total", "counter", "Triggers that got no frame (the part passed unjudged).",
            state.get("missed_triggers"))
    add.one("fps", "gauge", "Frames inspected per second, over the last 30.", state.get("fps"))
    add.one("reject_ratio", "gauge", "Share of the last 100 parts rejected (0 to 1).", state.get("reject_rate"))
    add.one("threshold", "gauge", "The threshold in use (the detector's own score scale).", state.get("threshold"))
    score, stages = stats.snapshot()
    add.histogram("score_over_threshold_ratio", "Each part's score divided by the threshold (above 1: rejected).",
                  [({}, score)])
    add.histogram("stage_seconds", "Time of each stage of one inspection.",
                  [({"stage": k}, v) for k, v in sorted(stages.items()) if k != _TOTAL])
    add.histogram("inspection_seconds", "Time of one whole inspection (every stage, and what lies between them).",
                  [({}, stages[_TOTAL])] if _TOTAL in stages else [])
    add.one("spool_queued", "gauge", "Messages spooled, not yet acknowledged by the broker.",
            state.get("spool_queued"))
    add.one("spool_dropped_total", "counter", "Messages dropped because the spool or the disk was full. Kept in "
            "the spool file: it goes on across agent restarts.", state.get("spool_dropped"))
    if broker is not None:
        add.one("broker_connected", "gauge", "1 while connected to the MQTT broker.", int(bool(broker["connected"])))
    add.one("retrains_total", "counter", "Retrains ended (fitted or failed) since the agent started.",
            state.get("retrains"))
    add.one("retrain_failures_total", "counter", "Retrains that failed (the previous detector kept).",
            state.get("retrain_failures"))
    add.one("retrain_last_duration_seconds", "gauge", "How long the last retrain took, collecting included.",
            state.get("retrain_last_s"))
    add.family("status", "gauge", "1 for the agent's status, 0 for the others.",
               [({"status": status}, int(status == state["status"])) for status in STATUSES]
               if state.get("status") else [])
    add.family("info", "gauge", "What runs: the model, the delegate, the detector and its file.",
               [({k: "" if state.get(k) is None else str(state[k]) for k in _INFO_FIELDS}, 1)])
    return ("\n".join(out) + "\n").encode()


class _Writer:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def _head(self, name: str, kind: str, help_: str) -> str:
        self.out += [f"# HELP {_PREFIX}{name} {help_}", f"# TYPE {_PREFIX}{name} {kind}"]
        return _PREFIX + name

    def one(self, name: str, kind: str, help_: str, value: float | None) -> None:
        self.family(name, kind, help_, [({}, value)])

    def family(self, name: str, kind: str, help_: str, samples: Iterable[tuple[dict[str, str], float | None]]) -> None:
        samples = [(labels, value) for labels, value in samples if value is not None]
        if samples:
            full = self._head(name, kind, help_)
            self.out += [f"{full}{_labels(labels)} {_number(value)}" for labels, value in samples]

    def histogram(self, name: str, help_: str, series: list[tuple[dict[str, str], Histogram]]) -> None:
        full = self._head(name, "histogram", help_)
        for labels, h in series:
            running = 0
            for bound, count in zip([*h.buckets, math.inf], h.counts):
                running += count
                self.out.append(f"{full}_bucket{_labels({**labels, 'le': _number(bound)})} {running}")
            self.out += [f"{full}_sum{_labels(labels)} {_number(h.total)}",
                         f"{full}_count{_labels(labels)} {running}"]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    """A label value as the text format quotes it. A non-UTF-8 file name (a surrogate from the file system) is
    written as its ``\\udcXX`` escape first: it could not be encoded, and the scrape failed."""
    value = value.encode(errors="backslashreplace").decode()
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
