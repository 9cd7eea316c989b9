"""The verdict collector end to end: real Mosquitto, Debian's real PostgreSQL, real ``edge-collector`` processes.

The fleet's promise (docs/fleet.md): every verdict lands exactly once, whatever the broker redelivers or a camera
resends, and a collector killed mid-stream loses nothing once it is restarted with its client id.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from edge_agent.deliver.messages import alert_message, to_json, verdict_message
from tests.fleet_rig import ROOT, CollectorProcess, camera_verdict, publish, run_cameras
from tests.mqtt_broker import MosquittoBroker, broker, wait_until  # noqa: F401 (fixture)
from tests.postgres import PostgresServer, database, postgres_server  # noqa: F401 (fixtures)

PREFIX = "fleet"


def count(dsn: str, sql: str = "SELECT count(*) FROM verdicts", *params: object) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_fifty_cameras_two_collectors_one_killed_mid_stream_land_exactly_once(broker: MosquittoBroker, database: str,
                                                                                tmp_path: Path) -> None:
    collectors = [CollectorProcess(broker, database, PREFIX, f"collector-{i}", tmp_path, ["--batch", "200"])
                  for i in (1, 2)]
    for c in collectors:
        c.start()
    try:
        sent: list = []
        cameras = threading.Thread(
            target=lambda: sent.extend(run_cameras(broker, PREFIX, 50, 200, pace_s=0.005)), daemon=True)
        cameras.start()
        assert wait_until(lambda: count(database) >= 2000, 60), collectors[0].log()
        collectors[0].kill()
        killed_at = count(database)
        # While it is down the other collector keeps storing: the broker still serves the group.
        assert wait_until(lambda: count(database) > killed_at + 500, 60), collectors[1].log()
        collectors[0].start()
        cameras.join(120)
        assert not cameras.is_alive()
        assert wait_until(lambda: count(database) >= 10_000, 120), (count(database), collectors[0].log())
        time.sleep(1)  # anything beyond 10,000 would be a duplicate row; give it the chance to show
        with psycopg.connect(database) as conn:
            rows = set(conn.execute("SELECT device, epoch, seq FROM verdicts").fetchall())
            per_collector = dict(conn.execute("SELECT collector, count(*) FROM verdicts GROUP BY collector").fetchall())
        assert count(database) == 10_000 and rows == set(sent)
        # Both collectors took a share of the load (the shared subscription split it).
        assert set(per_collector) == {"collector-1", "collector-2"} and min(per_collector.values()) > 500
    finally:
        for c in collectors:
            c.stop()


def test_duplicates_replays_and_a_new_epoch(broker: MosquittoBroker, database: str, tmp_path: Path) -> None:
    collector = CollectorProcess(broker, database, PREFIX, "collector-dup", tmp_path)
    collector.start()
    try:
        first, second = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
        verdicts = [camera_verdict("cam7", first, seq, anomalous=seq == 3) for seq in range(1, 6)]
        payloads = [to_json(v) for v in verdicts]
        topic = f"{PREFIX}/cam7/verdict"
        publish(broker, topic, payloads)
        publish(broker, topic, payloads[1:3])  # a QoS 1 duplicate / an agent's resend after a restart
        # The agent's spool was replaced: seq starts again at 1 in a new epoch. Not a duplicate.
        publish(broker, topic, [to_json(camera_verdict("cam7", second, 1))])
        publish(broker, f"{PREFIX}/cam7/alert", [to_json(alert_message(verdicts[2], (12, 34)))] * 2)
        # Refused, and acknowledged (never redelivered forever): another device's payload, and not JSON.
        publish(broker, f"{PREFIX}/cam8/verdict", [payloads[0], b"{not json"])
        assert wait_until(lambda: count(database) == 6 and count(database, "SELECT count(*) FROM alerts") == 1, 20)
        assert wait_until(lambda: collector.log().count("refused a message") == 2, 10), collector.log()
        time.sleep(1)
        with psycopg.connect(database) as conn:
            keys = sorted(conn.execute("SELECT epoch, seq FROM verdicts").fetchall())
            alert = conn.execute("SELECT device, seq, payload, captured_at, received_at FROM alerts").fetchone()
            skew = conn.execute("SELECT max(received_at - captured_at) FROM verdicts").fetchone()[0]
        assert keys == sorted([(first, s) for s in range(1, 6)] + [(second, 1)])
        assert alert[:2] == ("cam7", 3) and alert[2]["peak"] == {"x": 12, "y": 34}
        # Both clocks are stored: the device's capture time and the collector's receive time (the same host here).
        assert alert[4] >= alert[3] and skew.total_seconds() < 30
        assert count(database) == 6
    finally:
        assert collector.stop() == 0, collector.log()


def test_rejects_of_one_device_in_the_last_hour_use_the_index(database: str) -> None:
    """The documented query (docs/fleet.md) is answered from the partial index, not by scanning every verdict."""
    from collector import db

    with db.connect(database) as conn:
        conn.execute(
            "INSERT INTO verdicts (device, epoch, seq, captured_at, received_at, verdict, score, threshold, collector,"
            " payload) SELECT 'cam' || (i % 50), 'e', i, now() - i * interval '1 second', now(),"
            " CASE WHEN i % 10 = 0 THEN 'anomalous' ELSE 'good' END, 0.1, 0.5, 'c', '{}'"
            " FROM generate_series(1, 50000) AS i")
        conn.execute("ANALYZE verdicts")
        query = ("SELECT epoch, seq, captured_at, score FROM verdicts WHERE device = %s AND verdict = 'anomalous'"
                 " AND captured_at > now() - interval '1 hour' ORDER BY captured_at DESC")
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, ("cam10",)).fetchall())
        rows = conn.execute(query, ("cam10",)).fetchall()
    assert "verdicts_rejects_by_device" in plan, plan
    # cam10: i = 10, 60, 110, ... anomalous (i % 10 == 0) within the last 3600 s: i = 10 + 50 k <= 3599.
    assert len(rows) == len(range(10, 3600, 50))


def test_collector_refuses_to_start_without_a_dsn(broker: MosquittoBroker, tmp_path: Path) -> None:
    collector = CollectorProcess(broker, "", PREFIX, "collector-nodsn", tmp_path)
    with pytest.raises(AssertionError):
        collector.start(timeout=10)
    assert collector.proc.returncode != 0 and "EDGE_COLLECTOR_DSN" in collector.log()


def test_bad_flags_and_missing_secrets_are_refused_naming_them(capsys: pytest.CaptureFixture, monkeypatch) -> None:
    from collector import cli

    with pytest.raises(SystemExit):
        cli.parse_args(["--group", "a/b"])
    assert "--group" in capsys.readouterr().err
    monkeypatch.setenv(cli.DSN_ENV, "host=127.0.0.1")
    monkeypatch.delenv("NO_SUCH_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="NO_SUCH_PASSWORD"):
        cli.main(["--username", "collector", "--password-env", "NO_SUCH_PASSWORD"])


def test_a_deeply_nested_payload_is_refused_and_the_collector_keeps_storing(broker: MosquittoBroker, database: str,
                                                                             tmp_path: Path) -> None:
    """``json.loads`` raises RecursionError (not ValueError) on deep nesting; it used to kill paho's thread while the
    process stayed alive, storing nothing more."""
    collector = CollectorProcess(broker, database, PREFIX, "collector-deep", tmp_path)
    collector.start()
    try:
        epoch = uuid.uuid4().hex[:16]
        topic = f"{PREFIX}/cam1/verdict"
        publish(broker, topic, [b"[" * 100_000 + b"]" * 100_000])
        publish(broker, topic, [to_json(camera_verdict("cam1", epoch, seq)) for seq in range(1, 11)])
        assert wait_until(lambda: count(database) == 10, 20), collector.log()
        assert "refused a message on fleet/cam1/verdict" in collector.log()
    finally:
        assert collector.stop() == 0, collector.log()


def test_poison_rows_are_refused_and_the_good_rows_of_their_batch_are_stored(broker: MosquittoBroker, database: str,
                                                                              tmp_path: Path) -> None:
    """Payloads that parse as JSON but that PostgreSQL refuses used to be retried every 2 s forever, holding every
    good row of their batch unacknowledged with them."""
    collector = CollectorProcess(broker, database, PREFIX, "collector-poison", tmp_path)
    epoch = uuid.uuid4().hex[:16]
    good = [to_json(camera_verdict("cam1", epoch, seq)) for seq in range(1, 21)]
    # The bare token NaN (json.dumps' default; the agent itself sends null), which Python parses.
    nan_score = to_json(camera_verdict("cam1", epoch, 100) | {"score": float("nan")})
    assert b"NaN" in nan_score
    poison = [nan_score, to_json(camera_verdict("cam1", epoch, 2**63)),
              to_json(camera_verdict("cam1", epoch + "\u0000", 101)),
              to_json(camera_verdict("cam1", epoch, 102) | {"part_id": "a\u0000b"}),
              # Past parse, refused on insert (a dict for the text column part_id): the batch is then stored row by
              # row and only this one is refused.
              to_json(camera_verdict("cam1", epoch, 104) | {"part_id": {"x": 1}})]
    # Published while the collector is stopped (its session queues them), so that they arrive as one batch.
    collector.start()
    assert collector.stop() == 0, collector.log()
    publish(broker, f"{PREFIX}/cam1/verdict", good[:10] + poison + good[10:])
    collector.start()
    try:
        assert wait_until(lambda: count(database) == 20, 20), collector.log()
        assert wait_until(lambda: collector.log().count("refused a message") == len(poison), 10), collector.log()
        # And it keeps going: later verdicts land too, one the camera could not score (score null) among them.
        unscored = verdict_message("cam1", "f.png", 0.0, float("nan"), 0.5, True, "m", None, {})
        publish(broker, f"{PREFIX}/cam1/verdict", [to_json(camera_verdict("cam1", epoch, 21)),
                                                   to_json(unscored | {"epoch": epoch, "seq": 22})])
        assert wait_until(lambda: count(database) == 22, 10), collector.log()
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT score, verdict FROM verdicts WHERE seq = 22").fetchone() == (None, "anomalous")
    finally:
        assert collector.stop() == 0, collector.log()


def test_a_postgresql_outage_mid_stream_loses_nothing(broker: MosquittoBroker, tmp_path: Path) -> None:
    """PostgreSQL stops while cameras publish and comes back: the batch is retried, nothing is lost or doubled."""
    server = PostgresServer()
    server.start()
    collector = None
    try:
        dsn = server.new_database()
        collector = CollectorProcess(broker, dsn, PREFIX, "collector-pg-outage", tmp_path, ["--batch", "50"])
        collector.start()
        sent: list = []
        cameras = threading.Thread(target=lambda: sent.extend(run_cameras(broker, PREFIX, 5, 200, pace_s=0.01)),
                                   daemon=True)
        cameras.start()
        assert wait_until(lambda: count(dsn) >= 100, 30), collector.log()
        server.shut_down()
        assert wait_until(lambda: "cannot reach PostgreSQL" in collector.log(), 20), collector.log()
        server.start()
        cameras.join(60)
        assert not cameras.is_alive()
        assert wait_until(lambda: count(dsn) >= 1000, 60), collector.log()
        time.sleep(1)
        with psycopg.connect(dsn) as conn:
            rows = set(conn.execute("SELECT device, epoch, seq FROM verdicts").fetchall())
        assert count(dsn) == 1000 and rows == set(sent)
        assert collector.proc.poll() is None
    finally:
        if collector is not None:
            collector.stop()
        server.stop()


def test_the_test_cluster_does_not_depend_on_the_callers_locale(monkeypatch) -> None:
    """initdb took the locale from LANG / LC_ALL and failed where that locale is not installed."""
    monkeypatch.setenv("LC_ALL", "xx_XX.UTF-8")
    monkeypatch.setenv("LANG", "xx_XX.UTF-8")
    server = PostgresServer()
    try:
        server.start()
        with psycopg.connect(server.dsn("postgres")) as conn:
            assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"
    finally:
        server.stop()


def test_a_failed_network_thread_ends_the_collector_with_an_error(broker: MosquittoBroker, database: str) -> None:
    """An exception that escapes into paho's network thread (injected here in a callback) used to leave a process
    that waited forever and was never restarted; now it exits non-zero, so systemd's Restart=always applies."""
    from collector import cli

    collector = cli.Collector(cli.parse_args(["--host", broker.host, "--port", str(broker.port), "--prefix", PREFIX,
                                              "--client-id", "collector-broken"]), database)

    def broken(*_: object) -> None:
        raise RuntimeError("injected")

    collector.client.on_subscribe = broken
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(collector.run()), daemon=True)
    runner.start()
    runner.join(20)
    collector.stopping.set()
    assert result == [1]


def test_a_retired_collector_hands_its_queued_share_over_and_its_session_ends(broker: MosquittoBroker, database: str,
                                                                              tmp_path: Path) -> None:
    """Mosquitto keeps giving a stopped member of the group its share (queued in its session): a collector that is
    simply stopped for good holds those verdicts back. ``--retire`` stores them and ends the session."""
    staying = CollectorProcess(broker, database, PREFIX, "collector-stays", tmp_path)
    leaving = CollectorProcess(broker, database, PREFIX, "collector-leaves", tmp_path)
    staying.start()
    leaving.start()
    try:
        assert leaving.stop() == 0, leaving.log()
        epoch = uuid.uuid4().hex[:16]
        publish(broker, f"{PREFIX}/cam1/verdict", [to_json(camera_verdict("cam1", epoch, s)) for s in range(1, 101)])
        assert wait_until(lambda: count(database) >= 40, 20), staying.log()
        time.sleep(2)
        assert count(database) < 100  # the stopped collector's share waits in its session
        retire = subprocess.run([*leaving.args, "--retire"], env=leaving.env, cwd=ROOT, capture_output=True,
                                timeout=60)
        assert retire.returncode == 0, retire.stderr.decode()
        assert count(database) == 100, retire.stderr.decode()
        # Its session is gone: every later verdict goes to the collector that stays.
        publish(broker, f"{PREFIX}/cam1/verdict", [to_json(camera_verdict("cam1", epoch, s)) for s in range(101, 201)])
        assert wait_until(lambda: count(database) == 200, 20), staying.log()
    finally:
        assert staying.stop() == 0, staying.log()
