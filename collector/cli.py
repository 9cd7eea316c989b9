"""``edge-collector``: the fleet's verdict collector, MQTT -> PostgreSQL. It runs on a server, never on a camera.

Loss-free by construction (docs/fleet.md):
- An MQTT 5 shared subscription (``$share/<group>/<prefix>/+/verdict`` and ``.../alert``): the broker hands each
  message to one member of the group, so several collectors split the load.
- Manual acknowledgement: a QoS 1 message is PUBACKed only after its row is committed. A collector killed between
  the two leaves the message unacknowledged in its session, and the broker sends it again.
- A persistent session (a fixed client id, a session expiry > 0, ``clean_start`` off): what the broker queued for a
  collector while it was down, and what it had in flight to it, is delivered when that same client id connects
  again. So a collector that dies must be restarted (systemd ``Restart=always``) with the same ``--client-id``, and
  one taken out of service for good is first drained with ``--retire``: Mosquitto keeps queuing a stopped member's
  share of the group in its session.
- The key ``(device, epoch, seq)`` with ``ON CONFLICT DO NOTHING`` (`collector.db`): redeliveries leave one row.

Threads: paho's network thread queues each message with the collector's receive time; the main thread takes them
in order, inserts a batch, commits, then acknowledges the batch in the order received (as MQTT requires). If the
network thread ends, the process exits with status 1 rather than wait forever.
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
#: With --retire: the session counts as drained once nothing has arrived for this long after the unsubscription.
RETIRE_IDLE_S = 3.0


class Received(NamedTuple):
    mid: int
    qos: int
    row: db.Row | None  # None: refused (logged), acknowledged so that it is not sent again forever
    connection: int  # which broker connection it came on: a message id means something only on that one


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
    p.add_argument("--retire", action="store_true",
                   help="end this collector (this --client-id) for good: leave the group, store what the broker "
                        "queued in its session, then end the session and exit (docs/fleet.md)")
    args = p.parse_args(argv)
    try:
        check_topic_level("topic_prefix", args.prefix)
        check_topic_level("group", args.group, one_level=True)
        if args.batch < 1 or args.session_expiry_s < 1:
            raise ValueError("--batch and --session-expiry-s must be at least 1")
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
        # Counts broker connections. A message received on an earlier one is not acknowledged on a later one: the
        # broker sends it again after the reconnect (with a new id), and its old id may name another message now.
        self.connection = 0
        self.connection_lock = threading.Lock()
        self.network_failed = False
        self.unsubscribed = threading.Event()  # --retire: the broker no longer adds to this collector's share
        self.last_received = time.monotonic()
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
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s (check --username and the password)",
                      self.args.host, self.args.port, reason_code)
            return
        log.info("connected to %s:%d as %s (session present: %s)", self.args.host, self.args.port,
                 self.args.client_id, flags.session_present)
        if self.args.retire:
            client.unsubscribe(self.filters)
        else:
            client.subscribe([(f, 1) for f in self.filters])

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list,
                        properties: Any) -> None:
        log.info("retiring: left the group (%s); storing what the broker queued for %s", ", ".join(self.filters),
                 self.args.client_id)
        self.last_received = time.monotonic()
        self.unsubscribed.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        refused = [f"{f} ({rc})" for f, rc in zip(self.filters, reason_codes) if rc.is_failure]
        if refused:
            log.error("the broker refused the subscriptions %s: check the ACL's collector user (docs/fleet.md)",
                      ", ".join(refused))
        else:
            log.info("subscribed to %s", ", ".join(self.filters))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self.connection_lock:
            self.connection += 1
        if not self.stopping.is_set():
            log.warning("lost the broker (%s); reconnecting, unacknowledged messages will come again", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received_at = dt.datetime.now(dt.timezone.utc)  # the collector's clock, beside the device's captured_at
        self.last_received = time.monotonic()
        levels = message.topic.split("/")
        row = None
        try:
            row = db.parse(levels[-1], levels[-2], message.payload, received_at, self.args.client_id)
        except db.BadMessage as exc:
            log.warning("refused a message on %s: %s", message.topic, exc)
            self.stats["refused"] += 1
        except Exception:  # a bug must not kill paho's thread: refuse this message (logged) and go on
            log.exception("refused a message on %s: unexpected error; please report it", message.topic)
            self.stats["refused"] += 1
        self.inbox.put(Received(message.mid, message.qos, row, self.connection))

    def _network(self) -> None:
        """paho's loop, as ``loop_start`` runs it, except that its end (an exception in paho or a callback) stops the
        collector: a process without a network thread would otherwise wait forever and never be restarted."""
        try:
            self.client.loop_forever(retry_first_connection=True)
        except Exception:
            log.exception("the MQTT network thread failed")
        if not self.stopping.is_set():
            log.error("the MQTT network thread ended; exiting so that systemd (Restart=always) restarts the collector")
            self.network_failed = True
            self.stopping.set()

    def run(self) -> int:
        """Runs until SIGTERM (returns 0) or until the MQTT network thread fails (returns 1)."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.args.session_expiry_s
        # The broker keeps at most this many unacknowledged messages in flight to us: a batch being committed
        # and the next one arriving.
        props.ReceiveMaximum = min(2 * self.args.batch, 65535)
        conn = self._connect_db()
        self.client.connect_async(self.args.host, self.args.port, keepalive=self.args.keepalive,
                                  clean_start=False, properties=props)
        network = threading.Thread(target=self._network, name="mqtt", daemon=True)
        network.start()
        last_stats = time.monotonic()
        try:
            while not self.stopping.is_set():
                batch = self._next_batch()
                if batch:
                    conn = self._store(conn, batch)
                elif self._drained():
                    log.info("retired: the session of %s is drained and ended", self.args.client_id)
                    break
                if time.monotonic() - last_stats > STATS_EVERY_S:
                    log.info("stored %(stored)d rows, %(duplicates)d duplicates, %(refused)d refused", self.stats)
                    last_stats = time.monotonic()
        finally:
            # What is queued but not committed stays unacknowledged: the broker sends it to us again.
            self.stopping.set()  # also after --retire: the network thread's end is then expected
            self.client.disconnect(properties=self._end_session() if self._drained() else None)
            network.join(10)
            conn.close()
            log.info("stopped: stored %(stored)d rows, %(duplicates)d duplicates, %(refused)d refused", self.stats)
        return 1 if self.network_failed else 0

    def _drained(self) -> bool:
        return (self.unsubscribed.is_set() and self.inbox.empty()
                and time.monotonic() - self.last_received > RETIRE_IDLE_S)

    @staticmethod
    def _end_session() -> Properties:
        """DISCONNECT properties that end the session now, whatever expiry the CONNECT asked for."""
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        return props

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
                self._insert(conn, rows)
                break
            except psycopg.Error as exc:
                log.error("lost PostgreSQL while storing a batch of %d rows (%s); keeping it unacknowledged and "
                          "retrying in %.0f s", len(rows), str(exc).strip(), DB_RETRY_S)
                conn.close()
                if self.stopping.wait(DB_RETRY_S):
                    return conn  # not acknowledged: the broker sends these again after a restart
                conn = self._connect_db()
        with self.connection_lock:  # not while paho reconnects: an id acknowledged there could name another message
            for received in batch:
                if received.connection == self.connection:
                    self.client.ack(received.mid, received.qos)
        return conn

    def _insert(self, conn: psycopg.Connection, rows: list[db.Row]) -> None:
        """Insert the rows; raises only when the connection is lost (worth retrying). A row PostgreSQL refuses (a
        value `db.parse` did not foresee) is logged and refused alone, never retried forever with its batch."""
        try:
            self._count(db.insert(conn, rows), len(rows))
            return
        except psycopg.Error as exc:
            if _connection_lost(conn, exc):
                raise
            log.warning("PostgreSQL refused a batch of %d rows (%s); storing its rows one at a time",
                        len(rows), str(exc).strip())
        for row in rows:
            try:
                self._count(db.insert(conn, [row]), 1)
            except psycopg.Error as exc:
                if _connection_lost(conn, exc):
                    raise
                log.warning("refused a message of %s (epoch %r, seq %s): PostgreSQL: %s", *row.values[:3],
                            str(exc).strip())
                self.stats["refused"] += 1

    def _count(self, new: int, rows: int) -> None:
        self.stats["stored"] += new
        self.stats["duplicates"] += rows - new


def _connection_lost(conn: psycopg.Connection, exc: psycopg.Error) -> bool:
    """Whether the error is the connection's (an outage, a timeout: retry) rather than the data's (refuse it)."""
    return conn.closed or isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        collector = Collector(args, read_dsn(args.dsn_file))
    except ConfigError as exc:  # a broker password named by --password-env / --password-file that is not there
        raise SystemExit(f"edge-collector: {exc}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: collector.stopping.set())
    return collector.run()


if __name__ == "__main__":
    sys.exit(main())
