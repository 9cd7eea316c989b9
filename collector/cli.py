"""``edge-collector``: the fleet's verdict collector, MQTT -> PostgreSQL. It runs on a server, never on a camera.

Loss-free by construction (docs/fleet.md):
- An MQTT 5 shared subscription (``$share/<group>/<prefix>/+/verdict`` and ``.../alert``): the broker hands each
  message to one member of the group, so several collectors split the load.
- Manual acknowledgement: a QoS 1 message is PUBACKed only after its row is committed. A collector killed between
  the two leaves the message unacknowledged in its session, and the broker sends it again.
- A persistent session (a fixed client id, a session expiry > 0, ``clean_start`` off): what the broker queued for a
  collector while it was down, and what it had in flight to it, is delivered when that same client id connects
  again. So a collector that dies must be restarted (systemd ``Restart=always``) with the same ``--client-id``.
- The key ``(device, epoch, seq)`` with ``ON CONFLICT DO NOTHING`` (`collector.db`): redeliveries leave one row.

Threads: paho's network thread queues each message with the collector's receive time; the main thread takes them
in order, inserts a batch, commits, then acknowledges the batch in the order received (as MQTT requires).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector import db
from edge_agent.config import ConfigError, MqttConfig
from edge_agent.deliver.mqtt_client import make_client
from edge_agent.deliver.topics import check_topic_level

log = logging.getLogger("edge_collector")

DSN_ENV = "EDGE_COLLECTOR_DSN"
#: How long the writer waits for more messages before it commits a batch smaller than ``--batch``.
LINGER_S = 0.02
#: Between attempts to reach PostgreSQL again after an error (the batch is kept and retried, not acknowledged).
DB_RETRY_S = 2.0
STATS_EVERY_S = 60.0


class Received(NamedTuple):
    mid: int
    qos: int
    row: db.Row | None  # None: refused (logged), acknowledged so that it is not sent again forever


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    default = MqttConfig()
    p = argparse.ArgumentParser(prog="edge-collector", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=default.host, help="the broker (default %(default)s)")
    p.add_argument("--port", type=int, default=default.port, help="(default %(default)s)")
    p.add_argument("--prefix", default=default.topic_prefix, help="the cameras' [mqtt] topic_prefix (default %(default)s)")
    p.add_argument("--username", default="", help="broker user (the ACL's collector user)")
    p.add_argument("--password-env", default="", help="environment variable holding the broker password")
    p.add_argument("--password-file", default="", help="file holding the broker password")
    p.add_argument("--tls-ca", default="", help="CA file: connect over TLS")
    p.add_argument("--tls-cert", default="", help="client certificate (with --tls-key)")
    p.add_argument("--tls-key", default="")
    p.add_argument("--client-id", default=f"edge-collector-{socket.gethostname()}",
                   help="fixed per collector process and kept across restarts: its session holds its unacknowledged "
                        "messages (default %(default)s; give each collector on one host its own)")
    p.add_argument("--group", default="edge-collector", help="the shared subscription's group (default %(default)s)")
    p.add_argument("--session-expiry-s", type=int, default=7 * 24 * 3600,
                   help="how long the broker keeps a stopped collector's session and queue (default %(default)s)")
    p.add_argument("--batch", type=int, default=500, help="rows per transaction at most (default %(default)s)")
    p.add_argument("--dsn-file", default="", help=f"file holding the PostgreSQL DSN (else ${DSN_ENV})")
    p.add_argument("--keepalive", type=int, default=default.keepalive)
    args = p.parse_args(argv)
    try:
        check_topic_level("topic_prefix", args.prefix)
        check_topic_level("group", args.group)
        if "/" in args.group or args.batch < 1 or args.session_expiry_s < 1:
            raise ValueError("--group must be one topic level, --batch and --session-expiry-s at least 1")
    except ValueError as exc:
        p.error(str(exc))
    return args


def read_dsn(dsn_file: str) -> str:
    """The DSN from a file or the environment: it may hold a password, so never from the command line."""
    if dsn_file:
        try:
            return Path(dsn_file).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"edge-collector: --dsn-file {dsn_file}: {exc.strerror}") from None
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        raise SystemExit(f"edge-collector: set {DSN_ENV} (e.g. 'host=db dbname=edge user=collector') or --dsn-file; "
                         "a password goes into the DSN file or libpq's ~/.pgpass, never on the command line")
    return dsn


class Collector:
    def __init__(self, args: argparse.Namespace, dsn: str) -> None:
        self.args = args
        self.dsn = dsn
        self.stopping = threading.Event()
        self.inbox: queue.Queue[Received] = queue.Queue()
        self.stats = {"stored": 0, "duplicates": 0, "refused": 0}
        self.mqtt_settings = MqttConfig(host=args.host, port=args.port, topic_prefix=args.prefix,
                                        username=args.username, password_env=args.password_env,
                                        password_file=args.password_file, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                                        tls_key=args.tls_key, keepalive=args.keepalive, client_id=args.client_id)
        self.filters = [f"$share/{args.group}/{args.prefix}/+/{kind}" for kind in db.KINDS]
        self.client = make_client(self.mqtt_settings, args.client_id, mqtt5=True, manual_ack=True)
        self.client.reconnect_delay_set(self.mqtt_settings.reconnect_min_s, self.mqtt_settings.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s (check --username and the password)",
                      self.args.host, self.args.port, reason_code)
            return
        log.info("connected to %s:%d as %s (session present: %s)", self.args.host, self.args.port,
                 self.args.client_id, flags.session_present)
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        refused = [f"{f} ({rc})" for f, rc in zip(self.filters, reason_codes) if rc.is_failure]
        if refused:
            log.error("the broker refused the subscriptions %s: check the ACL's collector user (docs/fleet.md)",
                      ", ".join(refused))
        else:
            log.info("subscribed to %s", ", ".join(self.filters))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not self.stopping.is_set():
            log.warning("lost the broker (%s); reconnecting, unacknowledged messages will come again", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = dt.datetime.now(dt.timezone.utc)  # the collector's clock, beside the device's captured_at
        levels = message.topic.split("/")
        row = None
        try:
            row = db.parse(levels[-1], levels[-2], message.payload, received_at, self.args.client_id)
        except db.BadMessage as exc:
            log.warning("refused a message on %s: %s", message.topic, exc)
            self.stats["refused"] += 1
        self.inbox.put(Received(message.mid, message.qos, row))

    def run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.args.session_expiry_s
        # The broker keeps at most this many unacknowledged messages in flight to us: a batch being committed
        # and the next one arriving.
        props.ReceiveMaximum = min(2 * self.args.batch, 65535)
        conn = self._connect_db()
        self.client.connect_async(self.args.host, self.args.port, keepalive=self.args.keepalive,
                                  clean_start=False, properties=props)
        self.client.loop_start()
        last_stats = time.monotonic()
        try:
            while not self.stopping.is_set():
                batch = self._next_batch()
                if batch:
                    conn = self._store(conn, batch)
                if time.monotonic() - last_stats > STATS_EVERY_S:
                    log.info("stored %(stored)d rows, %(duplicates)d duplicates, %(refused)d refused", self.stats)
                    last_stats = time.monotonic()
        finally:
            # What is queued but not committed stays unacknowledged: the broker sends it to us again.
            self.client.disconnect()
            self.client.loop_stop()
            conn.close()
            log.info("stopped: stored %(stored)d rows, %(duplicates)d duplicates, %(refused)d refused", self.stats)

    def _next_batch(self) -> list[Received]:
        try:
            batch = [self.inbox.get(timeout=0.5)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + LINGER_S
        while len(batch) < self.args.batch:
            try:
                batch.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _connect_db(self) -> psycopg.Connection:
        while True:
            try:
                return db.connect(self.dsn)
            except psycopg.Error as exc:
                log.error("cannot reach PostgreSQL (%s); retrying in %.0f s", str(exc).strip(), DB_RETRY_S)
                if self.stopping.wait(DB_RETRY_S):
                    raise SystemExit(1) from None

    def _store(self, conn: psycopg.Connection, batch: list[Received]) -> psycopg.Connection:
        """Commit the batch, retrying through PostgreSQL outages, then acknowledge it in order."""
        rows = [r.row for r in batch if r.row is not None]
        while rows:
            try:
                new = db.insert(conn, rows)
                self.stats["stored"] += new
                self.stats["duplicates"] += len(rows) - new
                break
            except psycopg.Error as exc:
                log.error("PostgreSQL refused a batch of %d rows (%s); keeping it unacknowledged and retrying",
                          len(rows), str(exc).strip())
                conn.close()
                if self.stopping.wait(DB_RETRY_S):
                    return conn  # not acknowledged: the broker sends these again after a restart
                conn = self._connect_db()
        for received in batch:
            self.client.ack(received.mid, received.qos)
        return conn


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        collector = Collector(args, read_dsn(args.dsn_file))
    except ConfigError as exc:  # a broker password named by --password-env / --password-file that is not there
        raise SystemExit(f"edge-collector: {exc}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: collector.stopping.set())
    collector.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
