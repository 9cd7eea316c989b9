"""Smoke test of ``python -m bench.faults``: the quick rows (broker gone, SIGKILL, hostile commands) with a real
Mosquitto and the agent as a real process. Every row must lose no frame and end with the service running.
The full set (power cut, disk full on a tmpfs, hostile files, second instance) is ``docs/reliability.md``'s run."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, data_dir
from tests.mqtt_broker import require_mosquitto

ROWS = ("broker", "kill", "commands")


def test_quick_fault_rows_lose_nothing_and_the_service_keeps_running():
    require_mosquitto()
    # 110 frames: the broker row drops 100 of them (5 s at 20 fps) while the broker is gone.
    proc = subprocess.run([sys.executable, "-m", "bench.faults", "--frames", "110", "--only", ",".join(ROWS),
                           "--data", str(data_dir() / "mvtec_ad_bottle")],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    rows = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert [r["row"] for r in rows] == list(ROWS), report
    for r in rows:
        assert r["frames"] == 110, report
        assert r["lost"] == 0, report
        assert r["delivered"] + r["dropped"] >= r["frames"], report
        assert r["service"] == "running", report
        assert r["ok"], report
    assert proc.returncode == 0, report
