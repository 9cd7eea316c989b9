"""The collector's PostgreSQL side: the schema (created at start) and one batched, idempotent insert.

A verdict is identified by ``(device, epoch, seq)``, never by ``(device, seq)`` alone: a camera's ``seq`` starts
again at 1 in a new spool epoch (a spool moved aside as corrupt, a power loss that rolls the counter back;
`edge_agent.deliver.spool`). That key is the primary key, and every insert is ``ON CONFLICT DO NOTHING``, so a
QoS 1 duplicate, a message redelivered to a restarted collector and an agent's resend after its own restart all
leave one row. docs/fleet.md documents the tables and the queries the index is for.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

#: Idempotent DDL, run by every collector at start (concurrent starts are serialised by the advisory lock).
SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    device      text             NOT NULL,
    epoch       text             NOT NULL,
    seq         bigint           NOT NULL,
    captured_at timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL,
    verdict     text             NOT NULL,
    score       double precision,            -- NULL: the camera could not score the part (judged anomalous)
    threshold   double precision NOT NULL,
    model_id    text,
    part_id     text,
    collector   text             NOT NULL,
    payload     jsonb            NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS verdicts_rejects_by_device
    ON verdicts (device, captured_at DESC) WHERE verdict = 'anomalous';
CREATE TABLE IF NOT EXISTS alerts (
    device      text             NOT NULL,
    epoch       text             NOT NULL,
    seq         bigint           NOT NULL,
    captured_at timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL,
    score       double precision,
    threshold   double precision NOT NULL,
    part_id     text,
    collector   text             NOT NULL,
    payload     jsonb            NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS alerts_by_device ON alerts (device, captured_at DESC);
"""
_SCHEMA_LOCK = 0x65646765  # any constant; pg_advisory_xact_lock serialises CREATE ... IF NOT EXISTS races

_INSERT = {
    "verdict": "INSERT INTO verdicts (device, epoch, seq, captured_at, received_at, verdict, score, threshold, "
               "model_id, part_id, collector, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
               "ON CONFLICT DO NOTHING",
    "alert": "INSERT INTO alerts (device, epoch, seq, captured_at, received_at, score, threshold, part_id, "
             "collector, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
}
KINDS = tuple(_INSERT)
#: PostgreSQL's ``bigint``, the type of ``seq``.
SEQ_RANGE = range(-2**63, 2**63)
#: libpq settings a DSN may override: a database that stops answering (a half-open TCP connection, a server that
#: hangs) fails a statement instead of blocking the collector forever; the collector then reconnects and retries.
CONNECT_DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                    "keepalives_count": "3", "tcp_user_timeout": "60000"}
STATEMENT_TIMEOUT_MS = 60_000


class BadMessage(ValueError):
    """A payload the collector cannot store (not JSON, a field missing or of the wrong type, a foreign device, a value
    PostgreSQL refuses: a NaN or infinite number, a ``seq`` beyond ``bigint``, a NUL character)."""


@dataclass(frozen=True)
class Row:
    kind: str  # one of KINDS
    values: tuple[Any, ...]


def parse(kind: str, device: str, payload: bytes, received_at: dt.datetime, collector: str) -> Row:
    """The row for one message. ``device`` comes from the topic, which the broker's ACL ties to the camera's
    login (``%u``); a payload naming another device is refused rather than stored under either name."""
    try:
        msg = json.loads(payload)  # RecursionError on deeply nested arrays: caught below like any bad JSON
        if not isinstance(msg, dict):
            raise BadMessage("not a JSON object")
        if msg.get("device") != device:
            raise BadMessage(f"payload device {msg.get('device')!r} is not the topic's {device!r}")
        epoch, seq = msg["epoch"], msg["seq"]
        if not isinstance(epoch, str) or not isinstance(seq, int) or isinstance(seq, bool):
            raise BadMessage("epoch must be a string and seq an integer")
        if seq not in SEQ_RANGE:
            raise BadMessage(f"seq {seq} is beyond a signed 64-bit integer")
        captured_at = dt.datetime.fromisoformat(msg["captured_at"])
        # A part the camera could not score goes out with score null and verdict anomalous; stored as NULL.
        score = None if msg["score"] is None else float(msg["score"])
        threshold = float(msg["threshold"])
        if not (math.isfinite(threshold) and (score is None or math.isfinite(score))):
            raise BadMessage(f"score {score} and threshold {threshold} must be finite numbers (or the score null)")
        # The payload as PostgreSQL's jsonb takes it: no NaN / Infinity tokens, and no NUL character (which neither
        # jsonb nor a text column can hold) in any string, key or value.
        text = json.dumps(msg, allow_nan=False)
        if _has_nul(msg):
            raise BadMessage("a string holds a NUL character")
        part_id = msg.get("part_id")
        payload_json = Jsonb(msg, dumps=lambda _: text)
        if kind == "verdict":
            values = (device, epoch, seq, captured_at, received_at, str(msg["verdict"]), score, threshold,
                      msg.get("model_id"), part_id, collector, payload_json)
        else:
            values = (device, epoch, seq, captured_at, received_at, score, threshold, part_id, collector, payload_json)
    except BadMessage:
        raise
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise BadMessage(f"{type(exc).__name__}: {exc}") from None
    return Row(kind, values)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def connect(dsn: str) -> psycopg.Connection:
    """A connection with the schema in place, with the timeouts of `CONNECT_DEFAULTS` unless the DSN sets them."""
    conn = psycopg.connect(make_conninfo(**(CONNECT_DEFAULTS | conninfo_to_dict(dsn))))
    with conn.transaction():
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")  # the session's, kept after the commit
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(SCHEMA)
    return conn


def insert(conn: psycopg.Connection, rows: Sequence[Row]) -> int:
    """Insert a batch in one transaction; returns how many rows were new (the rest were duplicates).
    When this returns, the rows are committed, so their messages may be acknowledged."""
    new = 0
    with conn.transaction(), conn.cursor() as cur:
        for kind in KINDS:
            values = [r.values for r in rows if r.kind == kind]
            if values:
                cur.executemany(_INSERT[kind], values)
                new += max(cur.rowcount, 0)
    return new
