"""The publisher against a real mosquitto: order, outages, restarts, last will, commands and authentication.

Each test watches the broker with a real paho subscriber. It has a persistent session (``clean_session=False``)
on a broker with persistence, so it misses nothing while the broker restarts; duplicates are allowed (QoS 1 is
at least once) and are removed by ``seq`` as a real subscriber would.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import Spool
from tests.mqtt_broker import (BASE, DEVICE, PREFIX, MosquittoBroker, Subscriber, close_publishers, make_tls_files,
                               settings_for, started, wait_until)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_publisher(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(spool_name: str = "spool.db", on_command=None, **overrides: Any) -> Publisher:
        pub = Publisher(settings_for(broker, **overrides), DEVICE, Spool(tmp_path / spool_name), on_command)
        made.append(pub)
        return pub

    yield make
    close_publishers(*made)


def test_verdicts_arrive_in_order_with_seq(make_publisher, subscriber: Subscriber) -> None:
    pub = started(make_publisher())
    seqs = [pub.publish_verdict({"score": float(i)}) for i in range(100)]
    assert seqs == list(range(1, 101))
    assert subscriber.wait_for_seqs(100) == seqs
    assert [v["score"] for v in subscriber.json_on("verdict")] == [float(i) for i in range(100)]
    assert wait_until(lambda: pub.stats() == {"queued": 0, "dropped": 0, "connected": True}, 5)


def test_broker_down_at_start_queues_quickly_then_delivers_in_order(broker: MosquittoBroker, make_publisher,
                                                                     subscriber: Subscriber) -> None:
    broker.stop()
    pub = make_publisher()
    pub.start()
    durations = []
    for i in range(50):
        t0 = time.perf_counter()
        pub.publish_verdict({"i": i})
        durations.append(time.perf_counter() - t0)
    assert max(durations) < 0.05, f"publish_verdict blocked while the broker is down: {max(durations):.3f} s"
    assert pub.stats() == {"queued": 50, "dropped": 0, "connected": False}
    broker.start()
    assert subscriber.wait_for_seqs(50) == list(range(1, 51))
    assert wait_until(lambda: pub.stats()["queued"] == 0, 5)


def test_broker_restart_mid_stream_loses_nothing(broker: MosquittoBroker, make_publisher,
                                                subscriber: Subscriber) -> None:
    pub = started(make_publisher())
    n = 300

    def produce() -> None:
        for i in range(n):
            pub.publish_verdict({"i": i})
            time.sleep(0.004)

    producer = threading.Thread(target=produce)
    producer.start()
    assert wait_until(lambda: len(subscriber.verdict_seqs()) >= 50, 5)
    broker.stop()
    assert wait_until(lambda: not pub.connected, 5)
    time.sleep(0.3)
    assert producer.is_alive() and pub.stats()["queued"] > 0  # the outage really was mid-stream
    broker.start()
    producer.join(10)
    assert subscriber.wait_for_seqs(n, 15) == list(range(1, n + 1))


# An agent that spools verdicts and is then SIGKILLed: argv = host, port, spool path, number of verdicts.
AGENT = f"""
import sys, time
from edge_agent.config import MqttConfig
from edge_agent.deliver.publisher import Publisher
from edge_agent.deliver.spool import Spool
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
pub = Publisher(MqttConfig(host=host, port=port, topic_prefix={PREFIX!r}, keepalive=5, reconnect_min_s=0.05,
                           reconnect_max_s=0.5), {DEVICE!r}, Spool(path))
pub.start()
pub.publish_availability(True)
for i in range(n):
    pub.publish_verdict({{"i": i}})
deadline = time.monotonic() + 5
while n == 0 and not pub.connected and time.monotonic() < deadline:
    time.sleep(0.02)
print("connected" if pub.connected else "offline", flush=True)
time.sleep(60)
"""


def run_agent_until_killed(broker: MosquittoBroker, spool_path: Path, n: int,
                           between: Callable[[str], None]) -> None:
    """Run AGENT, call ``between(first line it printed)``, then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", AGENT, broker.host, str(broker.port), str(spool_path), str(n)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        between(proc.stdout.readline().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_online_retained_and_last_will_offline_when_the_agent_dies(broker: MosquittoBroker, subscriber: Subscriber,
                                                                   tmp_path: Path) -> None:
    def availability() -> list[bytes]:
        return [m.payload for m in subscriber.on("availability")]

    def retained_availability() -> list[tuple[bytes, bool]]:
        late = Subscriber(broker)  # subscribes after the fact: sees only the retained value
        try:
            wait_until(lambda: late.on("availability"), 5)
            return [(m.payload, m.retain) for m in late.on("availability")]
        finally:
            late.close()

    def check_online(line: str) -> None:
        assert line == "connected"
        assert wait_until(lambda: availability() == [b"online"], 5)
        assert retained_availability() == [(b"online", True)]

    run_agent_until_killed(broker, tmp_path / "spool.db", 0, check_online)
    assert wait_until(lambda: availability() == [b"online", b"offline"], 5)  # the last will: SIGKILL says nothing
    assert retained_availability() == [(b"offline", True)]


def test_spool_of_a_killed_agent_is_sent_after_restart(broker: MosquittoBroker, make_publisher,
                                                       subscriber: Subscriber, tmp_path: Path) -> None:
    broker.stop()
    run_agent_until_killed(broker, tmp_path / "spool.db", 40, lambda line: None)
    broker.start()
    pub = make_publisher("spool.db")
    assert len(pub.spool) == 40
    pub.start()
    assert subscriber.wait_for_seqs(40) == list(range(1, 41))
    assert pub.publish_verdict({}) == 41  # the sequence continues after the restart


def test_state_is_retained_and_the_latest_is_resent_on_reconnect(broker: MosquittoBroker, make_publisher,
                                                                subscriber: Subscriber) -> None:
    pub = started(make_publisher())
    pub.publish_state({"model": "v1"})
    assert wait_until(lambda: subscriber.json_on("state") == [{"model": "v1"}], 5)
    broker.stop()
    assert wait_until(lambda: not pub.connected, 5)
    pub.publish_state({"model": "v2"})  # while offline: remembered, sent on reconnect
    broker.start()
    assert wait_until(lambda: subscriber.json_on("state")[-1:] == [{"model": "v2"}], 5)
    late = Subscriber(broker)  # the broker took v2 before forwarding it, so v2 is the retained state now
    try:
        assert wait_until(lambda: late.on("state"), 5)
        assert [(json.loads(m.payload), m.retain) for m in late.on("state")] == [({"model": "v2"}, True)]
    finally:
        late.close()


def test_alert_image_event_and_offline_on_clean_stop(make_publisher, subscriber: Subscriber) -> None:
    pub = started(make_publisher())
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
    pub.publish_alert({"score": 9.5}, image_jpeg=jpeg)
    pub.publish_event("retrain/progress", {"collected": 3, "of": 10})
    assert wait_until(lambda: subscriber.on("retrain/progress") and subscriber.on("alert/image"), 5)
    assert subscriber.json_on("alert") == [{"score": 9.5}]
    assert [m.payload for m in subscriber.on("alert/image")] == [jpeg]
    assert subscriber.json_on("retrain/progress") == [{"collected": 3, "of": 10}]
    pub.stop(timeout=2)
    assert wait_until(lambda: [m.payload for m in subscriber.on("availability")][-1:] == [b"offline"], 5)


def test_commands_reply_with_result_or_error(make_publisher, subscriber: Subscriber,
                                             caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, dict, str]] = []

    def handle(name: str, args: dict) -> dict | None:
        calls.append((name, args, threading.current_thread().name))
        if name == "explode":
            raise RuntimeError("boom")
        return {"echo": args.get("n")}

    started(make_publisher(on_command=handle))
    send = [("retrain", b'{"request_id": "r1", "n": 5}'), ("trigger", b""), ("threshold", b"not json"),
            ("threshold", b"[1, 2]"), ("threshold", b"[" * 5000), ("explode", b'{"request_id": 7}'),
            ("trigger", b'{"request_id": "last"}')]  # 5000 "[" once ended the command thread (RecursionError)
    with caplog.at_level(logging.ERROR, logger="edge_agent.deliver.publisher"):
        for name, payload in send:
            subscriber.client.publish(f"{BASE}/cmd/{name}", payload, qos=1)
        assert wait_until(lambda: len([m for m in subscriber.messages if m.topic.endswith("/result")]) == 7, 5)
    replies = [(m.topic.split("/")[-2], json.loads(m.payload)) for m in subscriber.messages
               if m.topic.endswith("/result")]
    assert replies[0] == ("retrain", {"ok": True, "result": {"echo": 5}, "request_id": "r1"})
    assert replies[1] == ("trigger", {"ok": True, "result": {"echo": None}})
    assert [r[0] for r in replies[2:5]] == ["threshold", "threshold", "threshold"]
    assert all(r[1]["ok"] is False and "error" in r[1] for r in replies[2:5])
    assert replies[5] == ("explode", {"ok": False, "error": "RuntimeError: boom", "request_id": 7})
    assert replies[6] == ("trigger", {"ok": True, "result": {"echo": None}, "request_id": "last"})
    assert [c[0] for c in calls] == ["retrain", "trigger", "explode", "trigger"]  # invalid payloads never reach it
    assert calls[0][1] == {"request_id": "r1", "n": 5} and calls[1][1] == {}
    assert {c[2] for c in calls} == {"mqtt-commands"}
    assert "boom" in caplog.text


def test_username_password_authentication(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("GOOD_PASSWORD", "s3cret")
    monkeypatch.setenv("BAD_PASSWORD", "wrong")
    broker = MosquittoBroker(tmp_path / "auth-broker", users={"agent": "s3cret", "dashboard": "d4sh"})
    broker.start()
    sub = Subscriber(broker, "dashboard", "d4sh")
    good = Publisher(settings_for(broker, username="agent", password_env="GOOD_PASSWORD"), DEVICE,
                     Spool(tmp_path / "a.db"))
    bad = Publisher(settings_for(broker, username="agent", password_env="BAD_PASSWORD", client_id="intruder"), DEVICE,
                    Spool(tmp_path / "b.db"))
    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.deliver.publisher"):
            bad.start()
            bad.publish_verdict({"from": "bad"})
            started(good).publish_verdict({"from": "good"})
            assert wait_until(lambda: sub.json_on("verdict"), 5)
            time.sleep(1.0)  # give the bad client several attempts
        assert sub.json_on("verdict") == [{"from": "good", "seq": 1, "epoch": good.spool.epoch}]
        assert not bad.connected and bad.stats()["queued"] == 1
        assert "refused" in caplog.text
    finally:
        close_publishers(good, bad)
        sub.close()
        broker.stop()


def test_tls_with_password_from_the_environment_and_anonymous_refused(tmp_path: Path, monkeypatch) -> None:
    """The agent's own path: config with TLS and a password named by an environment variable."""
    from edge_agent.cli import make_sink
    from edge_agent.config import config_from_dict

    tls = make_tls_files(tmp_path / "tls")
    broker = MosquittoBroker(tmp_path / "tls-broker", users={"agent": "s3cret", "dashboard": "d4sh"}, tls=tls)
    broker.start()
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "s3cret")

    def config(state: str, **mqtt):
        return config_from_dict({"device": {"id": DEVICE, "state_dir": str(tmp_path / state)},
                                 "source": {"path": str(tmp_path)},
                                 "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": PREFIX,
                                          "tls_ca": str(tls.ca), **mqtt}})

    sub = Subscriber(broker, "dashboard", "d4sh", tls_ca=tls.ca)
    agent = make_sink(config("a", username="agent", password_env="TEST_MQTT_PASSWORD"))
    anonymous = make_sink(config("b"))
    try:
        anonymous.start()
        anonymous.publish_verdict({"from": "anonymous"})
        started(agent).publish_verdict({"over": "tls"})
        expected = [{"over": "tls", "seq": 1, "epoch": agent.spool.epoch}]
        assert wait_until(lambda: sub.json_on("verdict") == expected, 5)
        time.sleep(1.0)  # several attempts by the anonymous client
        assert sub.json_on("verdict") == expected
        assert not anonymous.connected and anonymous.stats()["queued"] == 1
    finally:
        close_publishers(agent, anonymous)
        sub.close()
        broker.stop()


def test_a_command_answered_later_does_not_hold_up_the_next(make_publisher, subscriber: Subscriber) -> None:
    """A handler may return a Future (a retrain): its reply comes when it resolves; others are answered meanwhile."""
    from concurrent.futures import Future

    slow: Future = Future()

    def handle(name: str, args: dict) -> Any:
        return slow if name == "retrain" else {"status": "retraining"}

    started(make_publisher(on_command=handle))
    subscriber.client.publish(f"{BASE}/cmd/retrain", b'{"request_id": "r"}', qos=1)
    subscriber.client.publish(f"{BASE}/cmd/status", b'{"request_id": "s"}', qos=1)
    assert wait_until(lambda: subscriber.json_on("cmd/status/result"), 5)
    assert subscriber.json_on("cmd/status/result") == [{"ok": True, "result": {"status": "retraining"}, "request_id": "s"}]
    assert not subscriber.on("cmd/retrain/result")  # the status reply came first, while the retrain is pending
    slow.set_exception(RuntimeError("retrain failed, previous model kept: good image 2 is black"))
    assert wait_until(lambda: subscriber.json_on("cmd/retrain/result"), 5)
    assert subscriber.json_on("cmd/retrain/result") == [
        {"ok": False, "error": "RuntimeError: retrain failed, previous model kept: good image 2 is black",
         "request_id": "r"}]


def test_oversized_commands_and_request_ids_are_refused_not_echoed(make_publisher, subscriber: Subscriber) -> None:
    calls: list[str] = []
    started(make_publisher(on_command=lambda name, args: calls.append(name) or {"ran": name}))
    huge_id = "x" * 16_000_000
    subscriber.client.publish(f"{BASE}/cmd/status", json.dumps({"request_id": huge_id}).encode(), qos=1)
    subscriber.client.publish(f"{BASE}/cmd/trigger", json.dumps({"request_id": "y" * 200}).encode(), qos=1)
    subscriber.client.publish(f"{BASE}/cmd/rollback", b'{"request_id": "ok"}', qos=1)
    assert wait_until(lambda: len([m for m in subscriber.messages if m.topic.endswith("/result")]) == 3, 20)
    status, trigger = subscriber.json_on("cmd/status/result")[0], subscriber.json_on("cmd/trigger/result")[0]
    assert not status["ok"] and "at most 65536" in status["error"] and "request_id" not in status
    assert not trigger["ok"] and "at most 128 characters" in trigger["error"] and "request_id" not in trigger
    assert max(len(m.payload) for m in subscriber.messages if m.topic.endswith("/result")) < 200
    assert calls == ["rollback"]  # only the well-formed command reached the handler
