"""The baseline of the ingest benchmark: a bare Flask app doing one autocommit INSERT per request
into the same Postgres (ARCHITECTURE.md's ~1,300 req/s figure). Run under gunicorn:

    DATABASE_URL=postgresql://... gunicorn --workers 2 bench.baseline_app:app
"""

from __future__ import annotations

import json
import os
import threading

import psycopg
from flask import Flask, Response, request

app = Flask(__name__)
_idle: list[psycopg.Connection] = []
_lock = threading.Lock()
URL = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

DDL = """CREATE TABLE IF NOT EXISTS bench_baseline_events (
    id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, event_id TEXT NOT NULL, payload JSONB NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(), UNIQUE (source, event_id))"""


def acquire() -> psycopg.Connection:
    """A pooled autocommit connection (a pool, not a thread-local: under gevent that would be one
    connection per request)."""
    with _lock:
        conn = _idle.pop() if _idle else None
    if conn is None or conn.closed:
        conn = psycopg.connect(URL, autocommit=True)
        conn.execute(DDL)
    return conn


def release(conn: psycopg.Connection) -> None:
    with _lock:
        if len(_idle) < 8:
            _idle.append(conn)
            return
    conn.close()


@app.get("/health/live")
def live() -> Response:
    return Response('{"status":"alive"}', mimetype="application/json")


@app.post("/api/v1/events/sentinel")
def ingest() -> tuple[Response, int]:
    body = request.get_json()
    conn = acquire()
    conn.execute(
        "INSERT INTO bench_baseline_events (source, event_id, payload) VALUES (%s, %s, %s)",
        (body.get("source", "llm-sentinel"), body["event_id"], json.dumps(body)),
    )
    release(conn)
    return Response(json.dumps({"status": "accepted", "event_id": body["event_id"]}), mimetype="application/json"), 202
