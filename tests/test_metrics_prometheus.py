"""``GET /metrics`` against Debian's real Prometheus (and promtool): a real agent (shipped model, real images, a real
Mosquitto) is scraped on loopback every second with the read-only token, and the values are read back through
Prometheus's HTTP API. (tests/test_metrics.py is about AUROC, not these.)"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from edge_agent.deliver.web import WebSink
from tests.mqtt_broker import PREFIX, MosquittoBroker, free_port, stop_process, wait_until
from tests.web_rig import PASSWORD, WebRig

PROMETHEUS = "/usr/bin/prometheus"  # Debian's prometheus package (.ci/run installs it)
PROMTOOL = "/usr/bin/promtool"
TOKEN = "a read-only scrape token"
TOKEN_ENV = "EDGE_TEST_METRICS_TOKEN"


@pytest.fixture(scope="module")
def rig(tmp_path_factory, real_set) -> Iterator[WebRig]:
    broker = MosquittoBroker(tmp_path_factory.mktemp("broker"))
    broker.start()
    os.environ[TOKEN_ENV] = TOKEN
    r = WebRig(tmp_path_factory.mktemp("metrics"), real_set, metrics_token_env=TOKEN_ENV,
               mqtt={"host": broker.host, "port": broker.port, "topic_prefix": PREFIX, "reconnect_min_s": 0.05,
                     "reconnect_max_s": 0.5})
    yield r
    r.stop()
    broker.stop()
    del os.environ[TOKEN_ENV]


def _metrics(rig: WebRig, **headers: str) -> Any:
    return rig.request("GET", "/metrics", headers=headers)


def test_metrics_need_the_read_only_token_or_the_login(rig: WebRig) -> None:
    assert _metrics(rig).status == 401
    assert _metrics(rig, Authorization="Bearer not the token").status == 401
    reply = _metrics(rig, Authorization=f"Bearer {TOKEN}")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert _metrics(rig, Authorization=f"Bearer {PASSWORD}").status == 200  # the page's password (a script)
    cookie, _ = rig.login()
    assert _metrics(rig, Cookie=cookie).status == 200
    # The token opens /metrics only: no state, no command.
    assert rig.request("GET", "/api/state", headers={"Authorization": f"Bearer {TOKEN}"}).status == 401
    before = rig.current()
    reply = rig.request("POST", "/api/command/rollback", "{}", {"Authorization": f"Bearer {TOKEN}"})
    assert reply.status == 403 and rig.current() == before


def test_metrics_are_off_without_a_token() -> None:
    web = WebSink(PASSWORD, port=0)
    web.start()
    try:
        host, port = web.url.split("//")[1].rstrip("/").split(":")
        request = urllib.request.Request(f"http://{host}:{port}/metrics",
                                         headers={"Authorization": f"Bearer {PASSWORD}"})
        with pytest.raises(urllib.error.HTTPError) as reply:
            urllib.request.urlopen(request, timeout=10)
        assert reply.value.code == 404
    finally:
        web.stop()


def test_the_exposition_passes_promtool(rig: WebRig) -> None:
    """promtool (Prometheus's own linter) reads the endpoint's text: names, types, histograms, label escaping."""
    rig.drop(rig.set.test_good[:2] + rig.set.defects[:1], "lint")
    assert wait_until(lambda: b'edge_agent_inspection_seconds_count' in
                      _metrics(rig, Authorization=f"Bearer {TOKEN}").body, 60)
    text = _metrics(rig, Authorization=f"Bearer {TOKEN}").body
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0 and not checked.stdout.strip() and not checked.stderr.strip(), checked
    # the whole inspection is a metric of its own: summed with the stages it counted each inspection twice
    assert b'stage="total"' not in text and b'edge_agent_stage_seconds_count{stage="score"}' in text
    for family in ("frames_total counter", "verdicts_total counter", "score_over_threshold_ratio histogram",
                   "stage_seconds histogram", "inspection_seconds histogram", "reject_ratio gauge", "status gauge",
                   "spool_queued gauge", "spool_dropped_total counter",
                   "broker_connected gauge", "retrains_total counter", "retrain_failures_total counter",
                   "retrain_last_duration_seconds gauge", "fps gauge", "info gauge"):
        assert f"# TYPE edge_agent_{family}".encode() in text, family
    broken = subprocess.run([PROMTOOL, "check", "metrics"], input=b"# TYPE x counter\nx{a=\"b} 1\n",
                            capture_output=True, timeout=60)
    assert broken.returncode != 0  # the linter does refuse a broken text


def test_an_unscored_part_stays_out_of_the_score_histogram() -> None:
    """A part the detector could not score goes out with score null (judged anomalous): its stage times count,
    the score histogram's sum stays a number, and the text still passes promtool."""
    from edge_agent.deliver.web.metrics import VerdictStats, render

    stats = VerdictStats()
    stats.observe({"score": 0.5, "threshold": 1.0, "verdict": "good", "latency_ms": {"total": 20.0}})
    stats.observe({"score": None, "threshold": 1.0, "verdict": "anomalous", "latency_ms": {"total": 30.0}})
    text = render({"status": "running", "inspected": 2, "good": 1, "rejected": 1}, None, stats)
    lines = text.decode().splitlines()
    assert "edge_agent_score_over_threshold_ratio_count 1" in lines
    assert "edge_agent_score_over_threshold_ratio_sum 0.5" in lines
    assert "edge_agent_inspection_seconds_count 2" in lines
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked


def test_hostile_labels_are_escaped_and_a_non_utf8_file_name_is_scraped() -> None:
    """A model id or a stage name with a quote, a backslash, a newline or a carriage return stays inside its label
    (promtool reads the text); a detector file whose name is not UTF-8 (a surrogate from the file system) made the
    scrape raise."""
    from edge_agent.deliver.web.metrics import VerdictStats, render

    stats = VerdictStats()
    hostile = 'a"b\\c\nd\re'
    stats.observe({"score": 0.5, "threshold": 1.0, "verdict": "good", "latency_ms": {"total": 20.0, hostile: 1.0}})
    text = render({"status": "running", "inspected": 1, "good": 1, "rejected": 0, "model_id": hostile,
                   "detector_file": "/var/lib/edge-agent/detectors/\udcff.npz"}, None, stats)
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0 and not checked.stderr.strip(), checked
    assert b'model_id="a\\"b\\\\c\\nd\re"' in text
    assert b'detector_file="/var/lib/edge-agent/detectors/\\\\udcff.npz"' in text


def test_every_status_is_exported_so_the_old_one_goes_to_zero() -> None:
    """Only the current status was exported: after running -> retraining, the running series went stale (still 1
    for 5 minutes in Prometheus) instead of 0."""
    from edge_agent.deliver.web.metrics import VerdictStats, render

    lines = render({"status": "retraining"}, None, VerdictStats()).decode().splitlines()
    status = {line.split('"')[1]: line.rsplit(" ", 1)[1] for line in lines if line.startswith("edge_agent_status{")}
    assert status == {"unfitted": "0", "running": "0", "retraining": "1"}


def _buckets(text: str, family: str) -> dict[str, int]:
    prefix = f'edge_agent_{family}_bucket{{le="'
    return {line[len(prefix):].split('"')[0]: int(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_a_rejected_part_never_lands_in_the_not_rejected_bucket() -> None:
    """The verdict message rounds score and threshold to 5 decimals: a part rejected just above the threshold
    read as score / threshold = 1 (le="1.0", "not rejected"), and a threshold below 5e-6 read 0, so no part was
    counted at all. The verdicts here are the agent's own messages, judged by the agent's own rule."""
    from edge_agent.deliver.messages import verdict_message
    from edge_agent.deliver.web.metrics import VerdictStats, render
    from edge_agent.learn.threshold import is_anomalous

    stats = VerdictStats()
    parts = [(1.0000021, 1.0000012), (0.9999, 1.0000012), (4e-6, 3e-6), (1e-6, 3e-6)]  # (score, threshold)
    for score, threshold in parts:
        stats.observe(verdict_message("cam", "f.png", 0.0, score, threshold, bool(is_anomalous([score], threshold)[0]),
                                      "m", None, {"total": 1.0}))
    buckets = _buckets(render({}, None, stats).decode(), "score_over_threshold_ratio")
    assert buckets["+Inf"] == len(parts)
    assert buckets["1.0"] == 2  # the two good parts, and only they
class Prometheus:
    """Debian's prometheus on a loopback port, scraping the agent every second, its data under ``folder``."""

    def __init__(self, folder: Path, target: str, token: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(token + "\n")
        (folder / "prometheus.yml").write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "edge-agent", "static_configs": [{"targets": [target]}],
                "authorization": {"type": "Bearer", "credentials_file": str(folder / "token")},
            }],
        }))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={folder / 'data'}",
                                      f"--web.listen-address={self.url.split('//')[1]}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_until(self._ready, 60), (folder / "prometheus.log").read_text()[-3000:]

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited"
        try:
            return urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        reply = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        self.log.close()


@pytest.fixture
def prometheus(rig: WebRig, tmp_path: Path) -> Iterator[Prometheus]:
    target = urllib.parse.urlsplit(rig.url).netloc
    p = Prometheus(tmp_path / "prometheus", target, TOKEN)
    yield p
    p.stop()


def test_prometheus_scrapes_what_the_agent_published(rig: WebRig, prometheus: Prometheus) -> None:
    assert wait_until(lambda: prometheus.value('up{job="edge-agent"}') == 1, 30), prometheus.query("up")
    names = rig.drop(rig.set.test_good[:3], "prom_good") + rig.drop(rig.set.defects[:3], "prom_defect")
    assert wait_until(lambda: set(names) <= {v["frame"] for v in rig.web.since(0)["verdicts"]}, 60)
    published = rig.web.since(0)["verdicts"]  # every verdict the page's sink got since the agent started
    by_result = Counter(v["verdict"] for v in published)
    assert by_result["anomalous"] >= 1 and by_result["good"] >= 1

    def scraped() -> dict[str, float | None]:
        verdicts = {r["metric"]["verdict"]: float(r["value"][1]) for r in prometheus.query("edge_agent_verdicts_total")}
        return {"frames": prometheus.value("edge_agent_frames_total"), **verdicts}

    expected = {"frames": float(len(published)), "good": float(by_result["good"]),
                "anomalous": float(by_result["anomalous"])}
    assert wait_until(lambda: scraped() == expected, 30), (scraped(), expected)
    assert prometheus.value("edge_agent_score_over_threshold_ratio_count") == len(published)
    assert prometheus.value("edge_agent_inspection_seconds_count") == len(published)
    assert prometheus.value('edge_agent_stage_seconds_count{stage="score"}') == len(published)
    # The rejected parts are the ones above the threshold: the buckets up to 1 hold the good ones only.
    assert prometheus.value('edge_agent_score_over_threshold_ratio_bucket{le="1.0"}') == by_result["good"]
    assert {r["metric"]["status"]: float(r["value"][1]) for r in prometheus.query("edge_agent_status")} == {
        "unfitted": 0, "running": 1, "retraining": 0}
    assert 0 <= prometheus.value("edge_agent_reject_ratio") <= 1
    assert prometheus.value("edge_agent_broker_connected") == 1
    assert prometheus.value("edge_agent_spool_dropped_total") == 0
    assert prometheus.value("edge_agent_spool_queued") is not None
    assert prometheus.value("edge_agent_retrains_total") == 1  # the first fit, on the folder of good parts
    assert prometheus.value("edge_agent_retrain_failures_total") == 0
    assert prometheus.value("edge_agent_retrain_last_duration_seconds") > 0
    info = prometheus.query("edge_agent_info")[0]["metric"]
    state = rig.agent.state()
    assert info["model_id"] == state["model_id"] and info["delegate"] == "cpu"
    assert info["detector_file"] == json.loads(rig.current())["file"]
    assert prometheus.value('edge_agent_status{status="running"}') == 1


def test_a_failed_retrain_is_counted(rig: WebRig) -> None:
    """A retrain on a folder with one image fails (at least two are needed); the failure is counted."""
    lonely = rig.tmp / "one_image"
    lonely.mkdir()
    good = rig.set.train_good[0]
    (lonely / f"only{good.suffix}").write_bytes(good.read_bytes())
    before = rig.agent.state()
    with pytest.raises(RuntimeError):
        rig.agent.request_retrain(folder=str(lonely)).result(60)
    text = _metrics(rig, Authorization=f"Bearer {TOKEN}").body.decode()
    assert f"edge_agent_retrains_total {before['retrains'] + 1}" in text.splitlines()
    assert f"edge_agent_retrain_failures_total {before['retrain_failures'] + 1}" in text.splitlines()
