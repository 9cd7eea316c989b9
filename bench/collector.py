"""Rows per second per verdict collector (docs/fleet.md): N simulated cameras x M verdicts through one real
Mosquitto into Debian's real PostgreSQL, with 1 and with 2 ``edge-collector`` processes.

    python -m bench.collector [--cameras 50] [--verdicts 400] [--collectors 1 2] [--batch 500]

It starts its own broker and PostgreSQL cluster (the tests' helpers, tests/mqtt_broker.py and tests/postgres.py;
fsync off, so the figure is the collector's and the broker's cost, not the disk's). To measure the collectors and
not the simulated cameras (which share this machine's CPUs), the collectors subscribe, stop, the cameras publish
everything into their persistent sessions, and then the collectors start again and drain it: the backlog after an
outage. Each collector's rate is its rows divided by the span between its first and last row's ``received_at``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import emit
from tests.fleet_rig import CollectorProcess, run_cameras
from tests.mqtt_broker import MosquittoBroker, wait_until
from tests.postgres import PostgresServer

PREFIX = "bench"


def one_run(server: PostgresServer, folder: Path, n_collectors: int, cameras: int, verdicts: int,
            batch: int) -> dict:
    broker = MosquittoBroker(folder / f"broker-{n_collectors}")
    broker.start()
    dsn = server.new_database()
    collectors = [CollectorProcess(broker, dsn, PREFIX, f"bench-{n_collectors}-{i}", folder, ["--batch", str(batch)])
                  for i in range(n_collectors)]
    try:
        for c in collectors:
            c.start()
            c.stop()  # subscribed, then gone: the broker queues their shares in their sessions
        run_cameras(broker, PREFIX, cameras, verdicts)
        total = cameras * verdicts
        start = time.monotonic()
        for c in collectors:
            c.start()

        # One connection for the polling: a new one per poll (50 a second) would start a backend process each time
        # on the CPUs the collectors are timed on.
        with psycopg.connect(dsn, autocommit=True) as conn:
            def stored() -> int:
                return conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]

            assert wait_until(lambda: stored() >= total, 600), f"only {stored()} of {total} rows arrived"
            wall = time.monotonic() - start
            spans = conn.execute("SELECT collector, count(*), extract(epoch FROM max(received_at) - min(received_at))"
                                 " FROM verdicts GROUP BY collector ORDER BY collector").fetchall()
    finally:
        for c in collectors:
            c.stop()
        broker.stop()
    per = {name: round(n / max(float(span), 1e-3)) for name, n, span in spans}
    return {"collectors": n_collectors, "rows": total, "wall_s": round(wall, 2),
            "rows_per_s_total": round(total / wall), "rows_per_s_per_collector": per}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=50)
    p.add_argument("--verdicts", type=int, default=400)
    p.add_argument("--collectors", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=500)
    args = p.parse_args()
    server = PostgresServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.collectors:
                emit(one_run(server, Path(tmp), n, args.cameras, args.verdicts, args.batch))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
