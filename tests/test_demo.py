"""The README's main job: a real inspection of elpv solar cells with the shipped model, no camera.

The cells come from the elpv-dataset package, which the test extra installs: no skip when it is missing.
"""

import json

from edge_agent.offline.demo import run_demo
from tests.mqtt_broker import Subscriber, wait_until


def test_demo_prints_verdicts_and_a_summary(tmp_path, capsys):
    assert run_demo(tmp_path / "demo", n_train=5, n_test=10) == 0
    out = capsys.readouterr().out
    verdicts = [json.loads(line) for line in out.splitlines() if line.startswith('{"topic": "verdict"')]
    assert len(verdicts) == 20 and [v["seq"] for v in verdicts] == list(range(1, 21))
    assert {v["verdict"] for v in verdicts} <= {"good", "anomalous"}
    summary = out.splitlines()[-1]
    assert "AUROC" in summary and "detection rate" in summary and "false rejects" in summary
    auroc = float(summary.split("AUROC")[1].split("|")[0])
    assert auroc > 0.6  # elpv is hard (about 0.75 here), but the detector must do far better than chance


def test_demo_publishes_to_a_broker_when_given(tmp_path, broker, capsys):
    sub = Subscriber(broker, base="edge-inspect/demo-camera")
    try:
        assert run_demo(tmp_path / "demo", n_train=5, n_test=5, broker=f"{broker.host}:{broker.port}") == 0
        assert wait_until(lambda: len(sub.on("verdict")) == 10, 20)
        assert [json.loads(m.payload)["seq"] for m in sub.on("verdict")] == list(range(1, 11))
        assert sub.on("availability")[-1].payload == b"offline"  # a clean stop
    finally:
        sub.close()
    assert out_lines(capsys) == 10


def out_lines(capsys) -> int:
    return sum(line.startswith('{"topic": "verdict"') for line in capsys.readouterr().out.splitlines())
