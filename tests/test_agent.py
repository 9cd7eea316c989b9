"""The agent end to end: real Mosquitto, the shipped TFLite model, real images (`real_set`) dropped into a folder."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_agent.agent
from edge_agent.capture.images import read_image
from edge_agent.cli import build_agent
from edge_agent.config import config_from_dict
from tests.conftest import FEW_IMAGE_TARGET, RealSet, drop_images
from tests.mqtt_broker import BASE, DEVICE, PREFIX, MosquittoBroker, Subscriber, wait_until
from tests.synthetic import lying, part_from


class Rig:
    """Starts agents on a watched folder; the test drops images into it as a line PC would."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker, real_set: RealSet):
        self.tmp, self.broker, self.set = tmp_path, broker, real_set
        self.frames = tmp_path / "frames"
        self.frames.mkdir()
        self.running: list[tuple] = []

    def config(self, **sections):
        data = {"device": {"id": DEVICE, "state_dir": str(self.tmp / "state")},
                "model": {"delegate": "cpu"},
                "source": {"kind": "folder", "path": str(self.frames), "watch": True, "reopen_min_s": 0.1},
                "augmentation": {"preset": "bottle", "factor": 2},
                "detector": {"name": "mahalanobis"},  # fast to refit; the default (combined) has its own test
                "threshold": {"target_false_reject": FEW_IMAGE_TARGET},
                "retrain": {"n_images": 3, "timeout_s": 30, "folders": [str(self.tmp)]},
                "mqtt": {"host": self.broker.host, "port": self.broker.port, "topic_prefix": PREFIX, "keepalive": 5}}
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **values}
        return config_from_dict(data)

    def start(self, **sections):
        agent = build_agent(self.config(**sections))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        self.running.append((agent, thread))
        assert wait_until(lambda: agent.sink.connected, 10), "agent did not connect to the broker"
        return agent

    def stop(self, agent):
        agent.stop()
        for a, t in self.running:
            if a is agent:
                t.join(20)
                assert not t.is_alive()
        self.running = [(a, t) for a, t in self.running if a is not agent]

    def drop(self, paths: list[Path], prefix: str) -> list[str]:
        return drop_images(self.frames, paths, prefix)

    def good_folder(self, n: int = 5) -> Path:
        folder = self.tmp / "good_parts"
        folder.mkdir(exist_ok=True)
        for p in self.set.train_good[:n]:
            shutil.copyfile(p, folder / p.name)
        return folder


@pytest.fixture
def rig(tmp_path, broker, real_set):
    r = Rig(tmp_path, broker, real_set)
    yield r
    for agent, thread in r.running:
        agent.stop()
        thread.join(20)


def command(sub: Subscriber, name: str, payload, request_id: str, timeout: float = 60) -> dict:
    body = payload if isinstance(payload, (bytes, str)) else json.dumps({**payload, "request_id": request_id})
    sub.client.publish(f"{BASE}/cmd/{name}", body, qos=1)
    assert wait_until(lambda: any(r.get("request_id") == request_id for r in sub.json_on(f"cmd/{name}/result")), timeout)
    return next(r for r in sub.json_on(f"cmd/{name}/result") if r.get("request_id") == request_id)


def retained_state(sub: Subscriber) -> dict:
    return sub.json_on("state")[-1]


def loop_turned(sub: Subscriber, request_id: str) -> None:
    """Prove the main loop took turns: a rollback is a job only the loop runs (refused here, as nothing is older)."""
    reply = command(sub, "rollback", {}, request_id, timeout=10)
    assert not reply["ok"] and "retrain in progress" not in reply["error"], reply


def test_unfitted_agent_reports_state_and_publishes_no_verdicts(rig, subscriber):
    rig.start()
    assert wait_until(lambda: subscriber.on("availability") and subscriber.on("availability")[-1].payload == b"online")
    assert wait_until(lambda: subscriber.json_on("state"))
    assert retained_state(subscriber)["status"] == "unfitted"
    rig.drop(rig.set.test_good[:2], "good")
    loop_turned(subscriber, "alive")  # the loop ran after the frames arrived...
    assert not subscriber.on("verdict")  # ...and judged none of them


def test_retrain_from_a_folder_then_verdicts_alerts_and_state(rig, subscriber):
    rig.start()
    reply = command(subscriber, "retrain", {"folder": str(rig.good_folder(5)), "n_images": 5}, "r1")
    assert reply["ok"], reply
    assert reply["result"]["n_train"] == 5 and reply["result"]["threshold"] > 0
    assert reply["result"]["distinct_parts"] == 5
    stages = [e["stage"] for e in subscriber.json_on("retrain/progress")]
    assert stages[-2:] == ["fitting", "done"]
    assert wait_until(lambda: retained_state(subscriber)["status"] == "running")
    state = retained_state(subscriber)
    assert state["n_train"] == 5 and state["delegate"] == "cpu" and state["model_id"].startswith("efficientnet-lite0")

    good = rig.drop(rig.set.test_good[:3], "a")
    bad = rig.drop(rig.set.defects[:3], "b")
    assert wait_until(lambda: len(subscriber.verdict_seqs()) >= 6, 30)
    verdicts = {v["frame"]: v for v in subscriber.json_on("verdict")}
    assert [v["seq"] for v in subscriber.json_on("verdict")] == sorted(v["seq"] for v in subscriber.json_on("verdict"))
    for v in verdicts.values():
        assert v["schema"] == 1 and v["device"] == DEVICE and v["model_id"] == state["model_id"]
        assert v["threshold"] == pytest.approx(reply["result"]["threshold"], rel=1e-4)
        assert v["latency_ms"]["invoke_ms"] > 0 and v["latency_ms"]["total"] >= v["latency_ms"]["invoke_ms"]
    assert all(verdicts[f]["verdict"] == "anomalous" for f in bad)
    n_bad = sum(v["verdict"] == "anomalous" for v in verdicts.values())
    status = command(subscriber, "status", {}, "s1")["result"]
    assert (status["inspected"], status["rejected"], status["good"]) == (6, n_bad, 6 - n_bad)
    assert status["reject_rate"] == pytest.approx(n_bad / 6, abs=1e-4)
    assert sum(verdicts[f]["verdict"] == "good" for f in good) >= 2
    assert max(verdicts[f]["score"] for f in good) < min(verdicts[f]["score"] for f in bad)
    assert wait_until(lambda: {a["frame"] for a in subscriber.json_on("alert")} >= set(bad), 10)
    images = subscriber.on("alert/image")
    assert images and images[0].payload[:2] == b"\xff\xd8"  # a JPEG
    snapshot = cv2.imdecode(np.frombuffer(images[0].payload, np.uint8), cv2.IMREAD_COLOR)
    assert snapshot is not None and max(snapshot.shape[:2]) <= 640


def test_a_verdict_is_counted_in_status_before_anyone_can_receive_it(rig, subscriber):
    """A subscriber that gets a verdict and asks for status must find that part counted (CI once saw 5 of 6)."""
    agent = rig.start()
    assert command(subscriber, "retrain", {"folder": str(rig.good_folder(5)), "n_images": 5}, "r1")["ok"]
    publish = agent.sink.publish_verdict
    seen: list[tuple[int, int, int]] = []

    def publish_and_look(verdict):
        state = agent.state()
        seen.append((state["inspected"], state["rejected"], verdict["verdict"] == "anomalous"))
        return publish(verdict)

    agent.sink.publish_verdict = publish_and_look
    rig.drop(rig.set.test_good[:2], "a")
    rig.drop(rig.set.defects[:2], "b")
    assert wait_until(lambda: len(seen) >= 4, 30), (seen, agent.state())
    rejected = 0
    for n, (inspected, rejected_then, anomalous) in enumerate(seen, 1):
        rejected += anomalous
        assert (inspected, rejected_then) == (n, rejected)


def test_threshold_and_rollback_commands(rig, subscriber):
    rig.start()
    first = command(subscriber, "retrain", {"folder": str(rig.good_folder(4)), "n_images": 4}, "r1")["result"]
    lower = command(subscriber, "threshold", {"sensitivity": 1.0}, "t1")
    assert lower["ok"] and lower["result"]["threshold"] < first["threshold"]  # more sensitive: a lower threshold
    fixed = command(subscriber, "threshold", {"value": 1e6, "force": True}, "t2")
    assert fixed["ok"] and fixed["result"]["threshold"] == 1e6
    rig.drop(rig.set.defects[3:4], "bad")
    assert wait_until(lambda: subscriber.json_on("verdict"), 20)
    assert subscriber.json_on("verdict")[0]["verdict"] == "good"  # nothing exceeds a huge fixed threshold
    back = command(subscriber, "rollback", {}, "b1")
    assert back["ok"] and back["result"]["threshold"] == pytest.approx(lower["result"]["threshold"], rel=1e-6)
    for payload, rid, fragment in (({"value": "high"}, "e1", "number"), ({"sensitivity": 0.5, "value": 3}, "e2", "exactly one"),
                                   ({"sensitivity": 3.0}, "e3", "sensitivity")):
        bad = command(subscriber, "threshold", payload, rid)
        assert not bad["ok"] and fragment in bad["error"], bad
    assert "unknown command" in command(subscriber, "dance", {}, "u1")["error"]


def agreed_detector(agent, subscriber: Subscriber) -> tuple[str, float]:
    """The store's pointer, the loop's detector and the published state name the same file and threshold."""
    pointer = json.loads((agent.store.dir / "current.json").read_text())["file"]
    in_memory = (agent._active_path.name, agent._active.metadata["threshold"])
    assert wait_until(lambda: retained_state(subscriber)["detector_file"] == pointer, 10)
    state = retained_state(subscriber)
    assert in_memory == (pointer, state["threshold"]), (in_memory, pointer, state)
    assert agent.store.load_current(agent.extractor.manifest).metadata["threshold"] == state["threshold"]
    return pointer, state["threshold"]


def test_threshold_and_rollback_during_a_retrain_are_refused_and_all_agree_after(rig, subscriber, monkeypatch):
    """A threshold move racing a retrain must not leave current.json on one detector and the loop on another."""
    agent = rig.start()
    command(subscriber, "retrain", {"folder": str(rig.good_folder(3)), "n_images": 3}, "r1")
    first = agreed_detector(agent, subscriber)
    real_fit, fitting, release = edge_agent.agent.fit_images, threading.Event(), threading.Event()

    def held_fit(*args, **kwargs):
        fitting.set()
        assert release.wait(60)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(edge_agent.agent, "fit_images", held_fit)
    second = {}
    retrain = threading.Thread(target=lambda: second.update(
        command(subscriber, "retrain", {"folder": str(rig.good_folder(4)), "n_images": 4}, "r2")))
    retrain.start()
    try:
        assert fitting.wait(30), "the retrain did not reach the fit"
        status = command(subscriber, "status", {}, "s1", timeout=5)  # answered while the fit holds the loop
        assert status["ok"] and status["result"]["status"] == "retraining"
        for name, payload, rid in (("threshold", {"sensitivity": 1.0}, "t1"), ("rollback", {}, "b1")):
            refused = command(subscriber, name, payload, rid, timeout=5)
            assert not refused["ok"] and "retrain in progress" in refused["error"], refused
    finally:
        release.set()
        retrain.join(60)
    assert second["ok"], second
    new_file, new_threshold = agreed_detector(agent, subscriber)
    assert new_file == second["result"]["detector_file"] != first[0]
    assert new_threshold == pytest.approx(second["result"]["threshold"])
    moved = command(subscriber, "threshold", {"sensitivity": 1.0}, "t2")  # after the retrain: applied to the new one
    assert moved["ok"] and moved["result"]["threshold"] < new_threshold
    assert agreed_detector(agent, subscriber) == (moved["result"]["detector_file"], moved["result"]["threshold"])
    back = command(subscriber, "rollback", {}, "b2")
    assert back["ok"] and agreed_detector(agent, subscriber) == (new_file, new_threshold)


def test_a_threshold_edited_in_the_config_applies_at_start_and_a_command_survives_a_restart(rig):
    from edge_agent.commands import ThresholdChange
    from edge_agent.config import fit_settings
    from edge_agent.learn.fitting import fit_images

    def agent_with(**threshold):
        # The default target: its log-normal bound is what "never below the good parts' scores" is about.
        return build_agent(rig.config(mqtt={"enabled": False}, threshold={"target_false_reject": 0.005, **threshold}))

    first = agent_with()
    settings = fit_settings(first.config)
    result = fit_images(first.extractor.embed, [read_image(p) for p in rig.set.train_good[:3]], settings)
    first.store.save(result, settings, first.extractor.manifest)
    fitted = agent_with().state()["threshold"]
    assert fitted == pytest.approx(result.threshold)
    stricter = agent_with(sensitivity=1.0)  # edited in the config: applied at start, no retrain needed
    assert max(result.loo_scores) <= stricter.state()["threshold"] < fitted
    assert stricter.store.load_current(stricter.extractor.manifest).metadata["threshold"] == stricter.state()["threshold"]
    stricter.set_threshold(ThresholdChange(value=123.0, force=True).apply)  # an operator's command...
    assert agent_with(sensitivity=1.0).state()["threshold"] == 123.0  # ...survives a restart with the same config
    assert agent_with(override=7.5).state()["threshold"] == 7.5
    assert agent_with().state()["threshold"] == pytest.approx(fitted, rel=1e-6)


def test_with_a_command_token_only_commands_that_carry_it_run(rig, subscriber, monkeypatch):
    from edge_agent.deliver.remote import send_command

    monkeypatch.setenv("TEST_COMMAND_TOKEN", "line-3-operators")
    agent = rig.start(mqtt={"command_token_env": "TEST_COMMAND_TOKEN"})
    refused = command(subscriber, "retrain", {"folder": str(rig.good_folder(3))}, "r1")
    assert not refused["ok"] and "wrong token" in refused["error"] and not agent.fitted
    reply = send_command(agent.config, "retrain", {"folder": str(rig.good_folder(3))}, timeout=60)  # the CLI's path
    assert reply["ok"], reply
    assert agent.fitted


def test_a_command_right_after_the_retrain_reply_finds_the_retrain_over(rig, subscriber, monkeypatch):
    """The reply goes out once the loop is back to inspecting: a slow clean-up after the fit must not make the
    operator's next command meet "retrain in progress"."""
    real_trim = edge_agent.agent.return_freed_memory
    monkeypatch.setattr(edge_agent.agent, "return_freed_memory", lambda: (time.sleep(0.5), real_trim()))
    rig.start()
    assert command(subscriber, "retrain", {"folder": str(rig.good_folder(3))}, "r1")["ok"]
    moved = command(subscriber, "threshold", {"sensitivity": 0.7}, "t1")
    assert moved["ok"], moved


def test_an_unreadable_retrain_folder_fails_the_retrain_not_the_agent(rig, subscriber, monkeypatch):
    def unreadable(folder, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(edge_agent.agent, "read_folder", unreadable)
    agent = rig.start()
    reply = command(subscriber, "retrain", {"folder": str(rig.good_folder(3))}, "r1")
    assert not reply["ok"] and "Permission denied" in reply["error"], reply
    assert command(subscriber, "status", {}, "s1")["result"]["status"] == "unfitted"  # the loop lives on
    assert agent._job is None


def test_in_trigger_mode_a_retrain_takes_one_frame_per_trigger(rig, subscriber):
    """One trigger, one part: a retrain must not learn one part seen many times; triggers are not replayed."""
    rig.start(trigger={"mode": "mqtt"})
    result = {}
    t = threading.Thread(target=lambda: result.update(command(subscriber, "retrain", {"n_images": 2}, "r1")))
    t.start()
    assert wait_until(lambda: any(e["stage"] == "collecting" for e in subscriber.json_on("retrain/progress")), 10)
    rig.drop(rig.set.train_good[:3], "train")

    def collected() -> list[int]:
        return [e["collected"] for e in subscriber.json_on("retrain/progress") if e["stage"] == "collecting"]

    assert command(subscriber, "trigger", {}, "g0")["ok"]
    assert wait_until(lambda: collected() == [0, 1], 10), collected()
    assert command(subscriber, "trigger", {}, "g1")["ok"]  # the loop took one of the three waiting frames, no more
    t.join(60)
    assert collected() == [0, 1, 2]
    assert result["ok"] and result["result"]["n_train"] == 2, result
    loop_turned(subscriber, "after")
    assert not subscriber.on("verdict")  # no trigger left over to judge the third frame


def test_failed_retrain_keeps_the_running_model(rig, subscriber):
    agent = rig.start()
    command(subscriber, "retrain", {"folder": str(rig.good_folder(3)), "n_images": 3}, "r1")
    before = agent.store.current_path()
    black = rig.tmp / "black"
    black.mkdir()
    for i in range(3):
        cv2.imwrite(str(black / f"{i}.png"), np.zeros((64, 64, 3), np.uint8))
    reply = command(subscriber, "retrain", {"folder": str(black)}, "r2")
    assert not reply["ok"] and "black" in reply["error"] and "previous model kept" in reply["error"]
    assert agent.store.current_path() == before and agent.fitted
    assert subscriber.json_on("retrain/progress")[-1]["stage"] == "failed"
    assert "n_images must be" in command(subscriber, "retrain", {"n_images": 1}, "r3")["error"]
    assert "not an existing folder under [retrain] folders" in command(subscriber, "retrain",
                                                                       {"folder": "/nonexistent"}, "r4")["error"]


def test_retrain_on_the_next_frames_from_the_source(rig, subscriber):
    rig.start()
    result = {}
    t = threading.Thread(target=lambda: result.update(command(subscriber, "retrain", {"n_images": 3}, "r1")))
    t.start()
    assert wait_until(lambda: any(e["stage"] == "collecting" for e in subscriber.json_on("retrain/progress")), 10)
    rig.drop(rig.set.train_good[:3], "train")
    t.join(60)
    assert result["ok"] and result["result"]["n_train"] == 3
    assert [e["collected"] for e in subscriber.json_on("retrain/progress") if e["stage"] == "collecting"] == [0, 1, 2, 3]


def test_parts_seen_while_a_retrain_collects_are_judged_by_the_model_in_use(rig, subscriber):
    rig.start()
    first = command(subscriber, "retrain", {"folder": str(rig.good_folder(3)), "n_images": 3}, "r1")["result"]
    result = {}
    t = threading.Thread(target=lambda: result.update(command(subscriber, "retrain", {"n_images": 3}, "r2")))
    t.start()
    assert wait_until(lambda: any(e["stage"] == "collecting" for e in subscriber.json_on("retrain/progress")), 10)
    collected = rig.drop(rig.set.train_good[3:6], "collect")
    t.join(60)
    assert result["ok"], result
    after = rig.drop(rig.set.test_good[:1], "after")
    assert wait_until(lambda: {v["frame"] for v in subscriber.json_on("verdict")} >= set(collected + after), 20)
    by_frame = {v["frame"]: v for v in subscriber.json_on("verdict")}
    assert {by_frame[f]["detector_file"] for f in collected} == {first["detector_file"]}  # none passed unjudged
    assert by_frame[after[0]]["detector_file"] == result["result"]["detector_file"]


def test_trigger_mode_inspects_one_frame_per_trigger(rig, subscriber):
    rig.start(trigger={"mode": "mqtt"})
    command(subscriber, "retrain", {"folder": str(rig.good_folder(3)), "n_images": 3}, "r1")
    rig.drop(rig.set.test_good[4:6], "good")
    loop_turned(subscriber, "alive1")
    assert not subscriber.on("verdict")  # frames waiting, the loop turning, no trigger: nothing judged
    assert command(subscriber, "trigger", {}, "g1")["ok"]
    assert wait_until(lambda: len(subscriber.on("verdict")) == 1, 10)
    loop_turned(subscriber, "alive2")
    assert len(subscriber.on("verdict")) == 1  # one trigger, one verdict
    assert "part_id" not in subscriber.json_on("verdict")[0]
    reply = command(subscriber, "trigger", {"part_id": "SN-0042/7"}, "g2")
    assert reply["ok"] and reply["result"]["part_id"] == "SN-0042/7", reply
    assert wait_until(lambda: len(subscriber.on("verdict")) == 2, 10)
    assert subscriber.json_on("verdict")[1]["part_id"] == "SN-0042/7"  # the PLC's id comes back with its part
    for bad in ("", "   ", "x" * 65, "a\nb", 42):
        reply = command(subscriber, "trigger", {"part_id": bad}, f"bad{bad!r:.5}")
        assert not reply["ok"] and "part_id must be 1 to 64 printable characters" in reply["error"], reply
    loop_turned(subscriber, "alive3")
    assert len(subscriber.on("verdict")) == 2  # a refused trigger takes no frame


def test_missing_source_is_reported_and_reopened(rig, subscriber, tmp_path):
    late = tmp_path / "late"
    rig.start(source={"path": str(late)})
    assert wait_until(lambda: any(e["status"] == "failed" and "not found" in e["error"]
                                  for e in subscriber.json_on("source/status")), 10)
    late.mkdir()
    assert wait_until(lambda: subscriber.json_on("source/status")[-1]["status"] == "open", 10)


def test_verdicts_made_during_an_outage_survive_an_agent_restart(rig, subscriber, broker):
    agent = rig.start()
    command(subscriber, "retrain", {"folder": str(rig.good_folder(3)), "n_images": 3}, "r1")
    broker.stop()
    rig.drop(rig.set.test_good[6:9], "good")
    assert wait_until(lambda: agent.inspected == 3, 20)
    rig.stop(agent)  # killed before it could send them: they wait in the spool on disk
    broker.start()
    rig.start()
    assert subscriber.wait_for_seqs(3, 20) == [1, 2, 3]
    rig.drop(rig.set.test_good[9:10], "good")
    assert subscriber.wait_for_seqs(4, 20) == [1, 2, 3, 4]


# ---- long streams: a broker outage and an agent killed mid-stream -------------------------------------------

def _many_frames(rig: Rig, n: int = 500) -> list[str]:
    """n small real frames (96 px, good and defective), named in line order."""
    sources = rig.set.test_good[:20] + rig.set.defects[:20]
    small = [cv2.resize(cv2.imread(str(p)), (96, 96), interpolation=cv2.INTER_AREA) for p in sources]
    staging = rig.tmp / "staging"
    staging.mkdir()
    names = []
    for i in range(n):
        name = f"{i:05d}.png"
        cv2.imwrite(str(staging / name), small[i % len(small)])
        names.append(name)
    return names


def _release(rig: Rig, names: list[str]) -> None:
    for name in names:
        (rig.tmp / "staging" / name).rename(rig.frames / name)


def _exactly_once_in_order(sub: Subscriber) -> list[int]:
    seqs = sub.verdict_seqs()  # duplicates (QoS 1 resends) removed, first arrival kept
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers missing or out of order"
    return seqs


def test_500_frames_through_a_broker_outage_arrive_exactly_once_in_order(rig, subscriber, broker):
    names = _many_frames(rig)
    agent = rig.start(trigger={"max_fps": 100.0})
    command(subscriber, "retrain", {"folder": str(rig.good_folder(4)), "n_images": 4}, "r1")
    _release(rig, names)
    assert wait_until(lambda: len(subscriber.verdict_seqs()) >= 100, 30)
    broker.stop()
    stopped_at = agent.inspected
    assert wait_until(lambda: agent.inspected >= stopped_at + 100, 30)  # judging goes on without a broker
    broker.start()
    assert wait_until(lambda: len(subscriber.verdict_seqs()) >= 500, 60), len(subscriber.verdict_seqs())
    seqs = _exactly_once_in_order(subscriber)
    frames = [v["frame"] for v in subscriber.json_on("verdict")]
    assert len(seqs) == 500 and sorted(set(frames)) == names
    print(f"outage: broker stopped after {stopped_at} verdicts, {len(subscriber.json_on('verdict'))} messages "
          f"received, {len(seqs)} distinct sequence numbers")


def test_agent_killed_mid_stream_loses_no_verdict(rig, subscriber, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    names = _many_frames(rig)
    cfg = tmp_path / "agent.toml"
    c = rig.config()
    cfg.write_text(f'[device]\nid = "{DEVICE}"\nstate_dir = "{c.device.state_dir}"\n'
                   f'[model]\ndelegate = "cpu"\n[trigger]\nmax_fps = 100.0\n'
                   f'[source]\nkind = "folder"\npath = "{rig.frames}"\nwatch = true\n'
                   f'[augmentation]\npreset = "bottle"\nfactor = 2\n'
                   f'[mqtt]\nhost = "{rig.broker.host}"\nport = {rig.broker.port}\ntopic_prefix = "{PREFIX}"\n')
    agent_bin = [sys.executable, "-m", "edge_agent.cli", "--config", str(cfg)]
    subprocess.run(agent_bin + ["fit", "--images", str(rig.good_folder(4))], check=True, capture_output=True, timeout=120)
    _release(rig, names)
    first = subprocess.Popen(agent_bin + ["run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(subscriber.verdict_seqs()) >= 150, 60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        killed_at = len(subscriber.verdict_seqs())
        assert killed_at < 500
        assert wait_until(lambda: subscriber.on("availability")[-1].payload == b"offline", 20)  # the last will
    finally:
        if first.poll() is None:
            first.kill()
    second = subprocess.Popen(agent_bin + ["run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: set(names) <= {v["frame"] for v in subscriber.json_on("verdict")}, 60)
        seqs = _exactly_once_in_order(subscriber)
        frames = [v["frame"] for v in subscriber.json_on("verdict")]
        # At least once per frame: at most the one frame being judged at the kill is judged again.
        assert len(seqs) - len(names) <= 1
        print(f"kill: SIGKILL after {killed_at} verdicts seen; {len(seqs)} sequence numbers for {len(set(frames))} frames")
    finally:
        second.terminate()
        second.wait(20)


def test_corrupt_model_stops_the_agent_with_one_clear_line_and_exit_2(tmp_path, shipped_model):
    import shutil
    import subprocess
    import sys

    model = tmp_path / "model"
    shutil.copytree(shipped_model, model)
    data = bytearray((model / "model.tflite").read_bytes())
    data[1000] ^= 0xFF
    (model / "model.tflite").write_bytes(bytes(data))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[device]\nstate_dir = "{tmp_path / "state"}"\n[model]\npath = "{model}"\n'
                   f'[source]\npath = "{tmp_path}"\n[mqtt]\nenabled = false\n')
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "--config", str(cfg), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2  # the unit's RestartPreventExitStatus=2: no restart loop
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "sha256" in errors[0] and "model.tflite" in errors[0], proc.stderr


def test_heat_map_detectors_put_the_map_in_the_alert(rig, subscriber):
    """The default (combined) detector gives heat maps: the snapshot shows where the defect is."""
    rig.start(detector={"name": "combined"})
    reply = command(subscriber, "retrain", {"folder": str(rig.good_folder(4)), "n_images": 4}, "r1")
    assert reply["ok"], reply
    assert retained_state(subscriber)["detector"] == "combined" or wait_until(
        lambda: retained_state(subscriber)["detector"] == "combined")
    rig.drop(rig.set.defects[4:5], "bad")
    assert wait_until(lambda: subscriber.on("alert/image") and subscriber.json_on("alert"), 20)  # image may come first
    snapshot = cv2.imdecode(np.frombuffer(subscriber.on("alert/image")[0].payload, np.uint8), cv2.IMREAD_COLOR)
    plain = cv2.resize(cv2.imread(str(rig.set.defects[4])), snapshot.shape[1::-1])
    alert = subscriber.json_on("alert")[0]
    height, width = cv2.imread(str(rig.set.defects[4])).shape[:2]
    assert 0 <= alert["peak"]["x"] < width and 0 <= alert["peak"]["y"] < height  # where to look, in frame pixels
    assert np.abs(snapshot.astype(int) - plain.astype(int)).mean() > 10  # the JET overlay is there


def test_the_peak_of_a_heat_map_is_given_in_frame_pixels() -> None:
    grid = np.zeros((14, 14), np.float32)
    grid[3, 10] = 5.0  # row 3, column 10 of a 14 x 14 map over a 700 x 280 (w x h) frame
    assert edge_agent.agent.peak(grid, (280, 700, 3)) == (525, 70)  # the centre of that cell: 50 x 20 px cells


def test_the_detector_sees_the_region_of_interest_and_a_new_region_needs_a_retrain(rig, subscriber):
    """Fitted and judging on the middle of each frame; the alert shows the whole frame with the region boxed; a
    changed region stops judging (a detector knows only the picture it was fitted on)."""
    roi = [0.125, 0.125, 0.75, 0.75]
    agent = rig.start(source={"roi": roi}, detector={"name": "combined"})
    reply = command(subscriber, "retrain", {"folder": str(rig.good_folder(4)), "n_images": 4}, "r1")
    assert reply["ok"], reply
    assert agent.store.load_current(agent.extractor.manifest).metadata["roi"] == roi
    bad = rig.drop(rig.set.defects[:3], "bad")
    assert wait_until(lambda: {v["frame"] for v in subscriber.json_on("verdict")} >= set(bad), 30)
    assert wait_until(lambda: subscriber.on("alert/image") and subscriber.json_on("alert"), 20)
    height, width = cv2.imread(str(rig.set.defects[0])).shape[:2]
    snapshot = cv2.imdecode(np.frombuffer(subscriber.on("alert/image")[0].payload, np.uint8), cv2.IMREAD_COLOR)
    assert snapshot.shape[1] / snapshot.shape[0] == pytest.approx(width / height, rel=0.02)  # the whole frame
    x0, y0, w, h = (round(roi[0] * width), round(roi[1] * height), round(roi[2] * width), round(roi[3] * height))
    alert = subscriber.json_on("alert")[0]
    assert x0 <= alert["peak"]["x"] < x0 + w and y0 <= alert["peak"]["y"] < y0 + h  # inside the region
    rig.stop(agent)

    moved = rig.start(source={"roi": [0, 0, 0.5, 0.5]})
    assert not moved.fitted  # fitted on another region: it refuses to judge
    seen = len(subscriber.json_on("verdict"))
    rig.drop(rig.set.test_good[:1], "later")
    loop_turned(subscriber, "alive")
    assert len(subscriber.json_on("verdict")) == seen
    assert retained_state(subscriber)["status"] == "unfitted"


def test_the_training_parts_are_kept_with_the_detector_and_published_retained(rig, subscriber, tmp_path):
    """An operator can see what a retrain learned: one numbered tile per training part, on a retained topic that
    follows the detector in use (a rollback shows the older fit's parts, or none)."""
    def latest() -> bytes:
        return subscriber.on("retrain/images")[-1].payload

    agent = rig.start()
    assert wait_until(lambda: subscriber.on("retrain/images"), 10) and latest() == b""  # unfitted: no picture
    assert command(subscriber, "retrain", {"folder": str(rig.good_folder(4)), "n_images": 4}, "r1")["ok"]
    assert wait_until(lambda: latest() != b"", 10)
    sheet = cv2.imdecode(np.frombuffer(latest(), np.uint8), cv2.IMREAD_COLOR)
    assert sheet.shape[:2] == (960, 960)  # 4 parts: 2 x 2 tiles of 480 px
    tiles = [sheet[r * 480:(r + 1) * 480, c * 480:(c + 1) * 480].astype(int) for r in (0, 1) for c in (0, 1)]
    assert all(np.abs(a - b).mean() > 1 for i, a in enumerate(tiles) for b in tiles[i + 1:])  # four different parts
    fitted_file = agent.store.current_path()
    assert agent.store.picture(fitted_file) == latest()  # kept beside the detector file
    assert command(subscriber, "threshold", {"sensitivity": 0.8}, "t1")["ok"]
    assert agent.store.picture(agent.store.current_path()) == agent.store.picture(fitted_file)  # same parts

    viewer = Subscriber(rig.broker)  # a dashboard connecting later still gets it: the broker retained it
    try:
        assert wait_until(lambda: viewer.on("retrain/images"), 10)
        assert viewer.on("retrain/images")[-1].payload == agent.store.picture(fitted_file)
    finally:
        viewer.close()


def test_a_trigger_the_loop_gets_to_too_late_is_reported_never_judged_on_a_later_part(rig, subscriber):
    """A part id must never land on another part's frame: triggers older than [trigger] max_age_s when the loop
    reaches them (it was busy, or stopped) are dropped and reported on trigger/missed."""
    rig.drop(rig.set.test_good[:3], "waiting")  # frames a stale trigger would otherwise take
    agent = build_agent(rig.config(trigger={"mode": "mqtt", "max_age_s": 0.2}))
    for part in ("A", "B", "C"):
        agent.trigger(part)
    time.sleep(0.4)  # the loop is not running yet: all three are stale by the time it starts
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    rig.running.append((agent, thread))
    assert wait_until(lambda: len(subscriber.json_on("trigger/missed")) == 3, 10)
    missed = subscriber.json_on("trigger/missed")
    assert [m["part_id"] for m in missed] == ["A", "B", "C"] and all(m["age_ms"] >= 400 for m in missed)
    assert not subscriber.on("verdict") and agent.state()["missed_triggers"] == 3


def test_a_flood_of_triggers_is_refused_beyond_the_queue_bound(rig):
    agent = build_agent(rig.config(trigger={"mode": "mqtt"}))
    for i in range(edge_agent.agent.MAX_PENDING_TRIGGERS):
        agent.trigger(str(i))
    with pytest.raises(ValueError, match="triggers are already waiting"):
        agent.trigger("one too many")


def test_in_trigger_mode_a_failed_source_is_reopened_without_waiting_for_a_trigger(rig, subscriber, tmp_path):
    late = tmp_path / "late"
    rig.start(source={"path": str(late)}, trigger={"mode": "mqtt"})
    assert wait_until(lambda: any(e["status"] == "failed" for e in subscriber.json_on("source/status")), 10)
    late.mkdir()
    assert wait_until(lambda: subscriber.json_on("source/status")[-1]["status"] == "open", 10)  # no trigger sent


def test_parts_at_any_angle_are_judged_upright_and_the_alert_points_at_the_defect_in_the_frame(rig, subscriber):
    """Good parts lying at any angle: the fit turns them upright (`learn.upright`), every frame is judged
    through the same window, and the heat map comes back over the frame where the scratch is."""
    part = part_from(read_image(rig.set.train_good[0]))
    folder = rig.tmp / "turned_parts"
    folder.mkdir()
    for i, degrees in enumerate(np.random.default_rng(5).uniform(0, 360, 6)):
        cv2.imwrite(str(folder / f"part{i}.png"), cv2.cvtColor(lying(part, degrees, (200, 200)), cv2.COLOR_RGB2BGR))
    rig.start(detector={"name": "patch-knn"}, augmentation={"preset": "object", "factor": 2})
    reply = command(subscriber, "retrain", {"folder": str(folder), "n_images": 6}, "r1")
    assert reply["ok"], reply
    assert reply["result"]["pose"]["as_captured"]["aligned"] is False and reply["result"]["pose"]["aligned"]
    scratched = part.copy()
    cv2.line(scratched, (15, 45), (55, 65), 255, 4)  # near the shank's free end: 87 px from the part's middle
    degrees, centre = 120.0, (215, 190)
    frames = rig.tmp / "new_parts"
    frames.mkdir()
    cv2.imwrite(str(frames / "scratched.png"), cv2.cvtColor(lying(scratched, degrees, centre), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(frames / "good.png"), cv2.cvtColor(lying(part, 250.0, (190, 205)), cv2.COLOR_RGB2BGR))
    rig.drop([frames / "good.png", frames / "scratched.png"], "p")
    assert wait_until(lambda: len(subscriber.json_on("verdict")) >= 2 and subscriber.json_on("alert"), 30)
    verdicts = {v["frame"].split("_", 1)[-1]: v for v in subscriber.json_on("verdict")}
    assert verdicts["scratched.png"]["score"] > verdicts["good.png"]["score"]
    alert = subscriber.json_on("alert")[-1]
    assert alert["frame"].endswith("scratched.png")
    theta = np.radians(degrees)
    scratch = (centre[0] - 87 * np.cos(theta), centre[1] + 87 * np.sin(theta))  # the image's y runs down
    assert np.hypot(alert["peak"]["x"] - scratch[0], alert["peak"]["y"] - scratch[1]) < 45, (alert["peak"], scratch)
