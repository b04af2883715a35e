"""Migrations: Postgres at heads with the invariants the database itself enforces; and the
embedded default (no DATABASE_URL, no REDIS_URL) end to end: SQLite file, filesystem broker,
gunicorn, a real worker."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.adapters.db import get_engine
from tests.conftest import ALL_QUEUES, wait_for
from tests.integration.test_gunicorn import Gunicorn

ROOT = Path(__file__).resolve().parent.parent.parent
SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())

INSERT_INCIDENT = text(
    "INSERT INTO incidents (id, title, description, source, severity, status, fingerprint, event_count, first_seen,"
    " last_seen, created_at, updated_at, tags, sla_acknowledge_breached, sla_resolve_breached, escalation_level)"
    " VALUES (:id, 't', '', 's', 'P3', :status, :fp, 1, now(), now(), now(), now(), '{}', false, false, 0)")


def test_postgres_is_at_every_head(test_env):
    from alembic.script import ScriptDirectory

    from app.adapters.migrate import alembic_config

    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with get_engine().connect() as conn:
        current = {r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))}
    assert current == heads


def test_partial_unique_index_forbids_two_active_incidents_per_fingerprint(db):
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(INSERT_INCIDENT, {"id": "INC-20250101-00001", "status": "NEW", "fp": "f1"})
        conn.execute(INSERT_INCIDENT, {"id": "INC-20250101-00002", "status": "RESOLVED", "fp": "f1"})
        conn.execute(INSERT_INCIDENT, {"id": "INC-20250101-00003", "status": "CLOSED", "fp": "f1"})
    for status in ("NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED"):
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(INSERT_INCIDENT, {"id": "INC-20250101-00009", "status": status, "fp": "f1"})


def test_incident_pages_keep_room_for_in_place_updates(db):
    """fillfactor 30 (0012; 70 in 0011): an event joining an open incident, and the route stage's one
    write of a new incident, update the row in place (HOT), adding nothing to the table's indexes;
    at 100 every such update wrote all 12 of them (test_pipeline_lock_order.py checks the pages)."""
    with get_engine().connect() as conn:
        options = conn.execute(text("SELECT reloptions FROM pg_class WHERE relname = 'incidents'")).scalar_one()
    assert "fillfactor=30" in (options or [])


def test_events_are_unique_per_source_and_event_id(db):
    insert = text("INSERT INTO events (source, event_id, incident_id, fingerprint, title, received_at, payload)"
                  " VALUES (:s, :e, 'INC-20250101-00001', 'f', 't', now(), '{}')")
    engine = get_engine()
    with engine.begin() as conn:
        conn.execute(insert, {"s": "a", "e": "1"})
        conn.execute(insert, {"s": "b", "e": "1"})  # another source may reuse the id
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"s": "a", "e": "1"})


@pytest.fixture
def embedded_env(tmp_path):  # type: ignore[no-untyped-def]
    """The environment of a newcomer's bare machine: none of the servers' settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PROMETHEUS_MULTIPROC_DIR",
                        "API_KEY_SECRET", "JWT_SECRET", "CONFIG_FILE", "IM_EXTRA_TASK_MODULES")}
    env["DATA_DIR"] = str(tmp_path / "data")
    env["LOG_LEVEL"] = "WARNING"
    return env


@pytest.mark.slow
def test_embedded_default_without_postgres_or_redis(embedded_env, tmp_path):
    def cli(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=embedded_env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    cli("db", "upgrade")
    database = tmp_path / "data" / "incident-manager.db"
    assert database.exists()
    with sqlite3.connect(database) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")}
    assert {"events", "incidents", "incident_timeline", "outbox", "api_keys", "dead_letters"} <= tables
    assert "WHERE status IN" in indexes["uq_incidents_active_fingerprint"]
    key = cli("apikey", "create", "--name", "newcomer", "--permission", "admin").strip().splitlines()[-1]

    server = Gunicorn(embedded_env, workers=2, log=tmp_path / "web.log", inherit=False).wait_ready()
    worker = None
    try:
        response = httpx.post(f"{server.url}/api/v1/events/sentinel", json=SENTINEL, headers={"X-API-Key": key},
                              timeout=30)
        assert response.status_code == 202, response.text
        incident_id = response.json()["incident_id"]
        got = httpx.get(f"{server.url}/api/v1/incidents/{incident_id}", headers={"X-API-Key": key}, timeout=30)
        assert got.status_code == 200 and got.json()["severity"] == "P1"
        again = httpx.post(f"{server.url}/api/v1/events/sentinel", json=SENTINEL, headers={"X-API-Key": key},
                           timeout=30)
        assert again.status_code == 200 and again.json()["incident_id"] == incident_id
        # the task waits in the filesystem broker until a worker comes (the hand-off happens on a
        # background sender after the answer, hence the wait)
        wait_for(lambda: any((tmp_path / "data" / "broker").iterdir()), 10, 0.05, "the task in the broker folder")

        log = (tmp_path / "worker.log").open("w")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "-Q",
             ALL_QUEUES, "--concurrency", "1", "--loglevel", "INFO",
             "-n", f"embedded-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=embedded_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def processed() -> bool:
            if worker.poll() is not None:
                pytest.fail((tmp_path / "worker.log").read_text()[-3000:])
            with sqlite3.connect(database) as conn:
                row = conn.execute("SELECT processed_at FROM events WHERE event_id = 'sent-2025-001234'").fetchone()
                outbox = conn.execute("SELECT count(*) FROM outbox WHERE done_at IS NULL").fetchone()[0]
            return row is not None and row[0] is not None and outbox == 0

        wait_for(processed, 90, 0.5, "the worker on the filesystem broker to process the event")
    finally:
        server.stop()
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, 15)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait(10)
    # the secrets the embedded default generated stay in DATA_DIR (a restart keeps keys valid)
    assert (tmp_path / "data" / "api-key-secret").exists() and (tmp_path / "data" / "jwt-secret").exists()
    time.sleep(0)
