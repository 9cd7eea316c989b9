"""The sink interface: several outputs receive the same messages, numbered once, and one broken output does not
silence the others."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from edge_agent.deliver.recording import RecordingSink
from edge_agent.deliver.sink import CommandSource, FanOut, Sink, leaves
from edge_agent.deliver.stdout import StdoutSink


class Broken(StdoutSink):
    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        raise OSError("display unplugged")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_first_sink_numbers_the_verdicts_and_the_others_receive_them_numbered() -> None:
    first, second = io.StringIO(), io.StringIO()
    fan = FanOut([StdoutSink(first), StdoutSink(second)])
    assert [fan.publish_verdict({"score": s}) for s in (1.0, 2.0)] == [1, 2]
    fan.publish_state({"status": "running"})
    assert lines(first) == lines(second)
    assert [(m["topic"], m.get("seq")) for m in lines(second)] == [("verdict", 1), ("verdict", 2), ("state", None)]


def test_a_failing_sink_is_logged_and_the_others_still_receive(caplog: pytest.LogCaptureFixture) -> None:
    good = io.StringIO()
    fan = FanOut([StdoutSink(io.StringIO()), Broken(io.StringIO()), StdoutSink(good)])
    with caplog.at_level(logging.ERROR, logger="edge_agent.deliver.sink"):
        assert fan.publish_verdict({"score": 3.0}) == 1
    assert [m["seq"] for m in lines(good)] == [1]
    assert "Broken" in caplog.text and "display unplugged" in caplog.text


def test_recording_sink_keeps_verdicts_and_publish_times_and_is_a_fan_out() -> None:
    out = io.StringIO()
    rec = RecordingSink(StdoutSink(out))
    for s in (0.5, 0.7):
        rec.publish_verdict({"score": s})
    rec.publish_event("retrain/progress", {"stage": "done"})
    assert [(v["seq"], v["score"]) for v in rec.verdicts] == [(1, 0.5), (2, 0.7)]
    assert len(rec.publish_ms) == 2 and min(rec.publish_ms) >= 0
    assert [m["topic"] for m in lines(out)] == ["verdict", "verdict", "retrain/progress"]


def test_leaves_find_the_command_source_behind_nested_fan_outs() -> None:
    class Commandable(StdoutSink):
        on_command = None

    inner = Commandable(io.StringIO())
    plain = StdoutSink(io.StringIO())
    sink = RecordingSink(FanOut([plain, inner]))
    assert leaves(sink) == [plain, inner]
    assert [s for s in leaves(sink) if isinstance(s, CommandSource)] == [inner]
    assert all(isinstance(s, Sink) for s in (plain, inner, sink))

