"""`incident-manager` as operators run it: subprocesses against this session's database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jwt
import psycopg
import pytest
from sqlalchemy import select

from app.adapters.db import read_session
from app.adapters.models import DeadLetter
from tests.conftest import PG_ADMIN_URL, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())
CLI = [sys.executable, "-m", "cli"]


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*CLI, *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.rstrip("\n").splitlines()[-1]


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "incident-manager"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("db", "apikey", "token", "deadletters", "run"):
        assert command in result.stdout


def test_db_upgrade_on_a_fresh_database(test_env):
    name = f"{test_env['DATABASE_URL'].rsplit('/', 1)[1]}_cli"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        result = cli("db", "upgrade", env={"DATABASE_URL": url})
        assert "database at heads" in result.stdout
        with psycopg.connect(url) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            versions = conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
        assert {"events", "incidents", "incident_timeline", "outbox", "api_keys", "dead_letters"} <= tables
        assert versions >= 1
        cli("db", "upgrade", env={"DATABASE_URL": url})  # idempotent
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("env,key", [({"API_PORT": "eighty"}, "API_PORT"),
                                     ({"ENABLE_ESCALATION": "perhaps"}, "ENABLE_ESCALATION"),
                                     ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL")])
def test_invalid_configuration_stops_start_up_naming_the_key(test_env, env, key):
    result = cli("apikey", "list", env=env, check=False)
    assert result.returncode == 2
    assert f"configuration error: {key}" in result.stderr


def test_apikey_create_prints_the_key_alone_on_the_last_line_and_it_works(client, db):
    result = cli("apikey", "create", "--name", "sentinel-prod", "--permission", "event:create",
                 "--permission", "incident:read")
    key = last_line(result)
    assert key.startswith("im_") and " " not in key
    response = client.post("/api/v1/events/sentinel", json=SENTINEL, headers={"X-API-Key": key})
    assert response.status_code == 202
    incident_id = response.get_json()["incident_id"]
    assert client.get(f"/api/v1/incidents/{incident_id}", headers={"X-API-Key": key}).status_code == 200
    # exactly the permissions asked for
    assert client.post(f"/api/v1/incidents/{incident_id}/acknowledge", json={},
                       headers={"X-API-Key": key}).status_code == 403


def test_apikey_create_with_rate_limit_and_burst(client, db):
    key = last_line(cli("apikey", "create", "--name", "limited", "--permission", "event:create",
                        "--rate-limit", "60", "--burst", "2"))
    statuses = [client.post("/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"c-{i}"),
                            headers={"X-API-Key": key}).status_code for i in range(3)]
    assert statuses == [202, 202, 429]
    unlimited = last_line(cli("apikey", "create", "--name", "unlimited", "--permission", "event:create",
                              "--rate-limit", "0", "--burst", "1"))
    statuses = {client.post("/api/v1/events/sentinel", json=dict(SENTINEL, event_id=f"u-{i}"),
                            headers={"X-API-Key": unlimited}).status_code for i in range(10)}
    assert statuses == {202}


def test_apikey_create_refuses_unknown_permissions(db):
    result = cli("apikey", "create", "--name", "x", "--permission", "everything", check=False)
    assert result.returncode != 0 and "everything" in result.stderr


def test_apikey_list_never_prints_a_key_or_digest(db):
    key = last_line(cli("apikey", "create", "--name", "listed-key", "--permission", "admin"))
    from app.services.auth import digest_key

    listing = cli("apikey", "list").stdout
    assert "listed-key" in listing and "admin" in listing and "active" in listing
    assert key not in listing and digest_key(key) not in listing
    assert key[:12] in listing  # the prefix identifies it


def test_apikey_revoke_stops_the_key(client, db):
    from app.services.auth import clear_key_cache, list_api_keys

    key = last_line(cli("apikey", "create", "--name", "to-revoke", "--permission", "event:create"))
    assert client.post("/api/v1/events/sentinel", json=SENTINEL, headers={"X-API-Key": key}).status_code == 202
    [row] = [k for k in list_api_keys() if k.name == "to-revoke"]
    result = cli("apikey", "revoke", row.id)
    assert f"revoked {row.id}" in result.stdout
    assert "revoked" in cli("apikey", "list").stdout
    clear_key_cache()  # what the 10 s TTL does (test_auth_and_bad_input covers the TTL itself)
    response = client.post("/api/v1/events/sentinel", json=dict(SENTINEL, event_id="after"),
                           headers={"X-API-Key": key})
    assert response.status_code == 401
    # revoking by prefix works too; an unknown id is an error
    other = last_line(cli("apikey", "create", "--name", "by-prefix", "--permission", "event:create"))
    cli("apikey", "revoke", other.split("_")[1])
    assert cli("apikey", "revoke", "no-such-key", check=False).returncode == 1


def test_token_create_prints_a_verifiable_jwt(client, db, test_env):
    result = cli("token", "create", "--subject", "edge-agent-7", "--ttl", "120")
    token = last_line(result)
    claims = jwt.decode(token, test_env["JWT_SECRET"], algorithms=["HS256"])
    assert claims["sub"] == "edge-agent-7" and claims["exp"] - claims["iat"] == 120
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-of-sufficient-length-xxxxxxxx", algorithms=["HS256"])
    response = client.get("/api/v1/incidents", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_deadletters_list_and_replay_with_a_real_worker(start_worker, db, tmp_path, monkeypatch):
    from tasks.celery_app import app

    monkeypatch.setenv("IM_EXTRA_TASK_MODULES", "tests.integration.test_cli_tasks")
    start_worker(queues="ingest", concurrency=1)
    record = tmp_path / "runs.log"
    (tmp_path / "runs.log.fail").write_text("")
    app.send_task("ops.test_flaky_until_fixed", args=[str(record)])

    def dead_lettered() -> list[DeadLetter]:
        with read_session() as session:
            return list(session.scalars(select(DeadLetter)))

    [letter] = wait_for(dead_lettered, 60, 0.3, "the dead letter after the retry budget")
    assert record.read_text().splitlines() == ["fail", "fail", "fail"]  # 1 try + TASK_MAX_RETRIES=2
    assert letter.task_name == "ops.test_flaky_until_fixed" and letter.args == [str(record)]
    assert "downstream still broken" in letter.error and letter.attempts == 3

    listed = [json.loads(line) for line in cli("deadletters", "list").stdout.splitlines()]
    assert [(d["id"], d["task"], d["replayed_at"]) for d in listed] == [(letter.id, "ops.test_flaky_until_fixed", None)]

    (tmp_path / "runs.log.fail").unlink()  # downstream fixed
    result = cli("deadletters", "replay", str(letter.id))
    assert f"replayed 1: [{letter.id}]" in result.stdout
    wait_for(lambda: record.read_text().splitlines()[-1:] == ["ok"], 30, 0.2, "the replayed task to succeed")
    assert cli("deadletters", "list").stdout.strip() == ""
    assert len(cli("deadletters", "list", "--all").stdout.splitlines()) == 1
    assert "replayed 0" in cli("deadletters", "replay").stdout
