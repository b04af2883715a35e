"""Bad input is answered, never swallowed, and writes nothing; API keys, permissions, rate limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app.adapters.db import read_session

ROOT = Path(__file__).resolve().parent.parent.parent
SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())
EMPTY = {"events": 0, "incidents": 0, "incident_timeline": 0, "outbox": 0}


def counts() -> dict[str, int]:
    with read_session() as session:
        return {table: session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("events", "incidents", "incident_timeline", "outbox")}


def assert_error(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def post_event(client, key=None, data=None, content_type="application/json", path="/api/v1/events/sentinel"):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": content_type} if content_type else {}
    if key:
        headers["X-API-Key"] = key
    return client.post(path, data=json.dumps(SENTINEL) if data is None else data, headers=headers)


# ------------------------------------------------------------------------------ body problems

@pytest.mark.parametrize("data", [b"{", b"{'event_id': 1}", b"", b"\xff\xfe{}", b'{"events": [1,]}',
                                  b'{"event_id": "n", "metrics": {"x": NaN}}', b'{"a": Infinity}'])
def test_malformed_json_is_400_and_writes_nothing(client, make_key, data):
    key = make_key("event:create")
    for path in ("/api/v1/events/sentinel", "/api/v1/events"):
        assert_error(post_event(client, key, data=data, path=path), 400, "malformed_json")
    assert counts() == EMPTY


@pytest.mark.parametrize("body,fields", [
    ({"event_id": "x", "source": "s"}, {"title", "severity"}),
    ({**SENTINEL, "event_id": ""}, {"event_id"}),
    ({**SENTINEL, "event_id": 42}, {"event_id"}),
    ({**SENTINEL, "title": "x" * 501}, {"title"}),
    ({**SENTINEL, "timestamp": "last tuesday"}, {"timestamp"}),
    ({**SENTINEL, "tags": {"nested": {"a": 1}}}, {"tags"}),
    ({**SENTINEL, "metrics": {"p95": "slow"}}, {"metrics"}),
    ({**SENTINEL, "resource": {"type": "endpoint"}}, {"resource"}),
    ({**SENTINEL, "resource": "ep-1"}, {"resource"}),
])
def test_schema_violation_is_422_with_per_field_errors(client, make_key, body, fields):
    key = make_key("event:create")
    error = assert_error(post_event(client, key, data=json.dumps(body)), 422, "validation_failed")
    assert set(error["details"]) == fields
    for messages in error["details"].values():
        assert messages  # a list (or, for nested fields, a mapping) of messages
    assert counts() == EMPTY


@pytest.mark.parametrize("data", [b"[]", b"[1, 2]", b'"text"', b"42", b"null"])
def test_body_that_is_not_an_object_is_422(client, make_key, data):
    error = assert_error(post_event(client, make_key("event:create"), data=data), 422, "validation_failed")
    assert error["details"] == {"_schema": ["expected a JSON object"]}
    assert counts() == EMPTY


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_wrong_content_type_is_415(client, make_key, content_type):
    key = make_key("event:create")
    assert_error(post_event(client, key, content_type=content_type), 415, "unsupported_media_type")
    assert counts() == EMPTY


def test_json_with_charset_and_vendor_json_types_are_accepted(client, make_key):
    key = make_key("event:create")
    assert post_event(client, key, content_type="application/json; charset=utf-8").status_code == 202
    body = dict(SENTINEL, event_id="vendor")
    assert post_event(client, key, data=json.dumps(body), content_type="application/vnd.api+json").status_code == 202


def test_body_over_10_mb_is_413_and_writes_nothing(client, make_key):
    key = make_key("event:create")
    limit = 10 * 1024 * 1024
    big = dict(SENTINEL, payload={"blob": "x" * limit})
    error = assert_error(post_event(client, key, data=json.dumps(big)), 413, "payload_too_large")
    assert str(limit) in error["message"]
    assert counts() == EMPTY
    # just under the limit is fine (the limit is on the body, not a guess)
    near = dict(SENTINEL, payload={"blob": "y" * (limit - 4096)})
    assert len(json.dumps(near)) < limit
    assert post_event(client, key, data=json.dumps(near)).status_code == 202


def test_max_body_bytes_is_configurable(make_key, db, monkeypatch):
    from api import create_app
    from app.config import reset_settings_cache

    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    reset_settings_cache()
    try:
        small_client = create_app().test_client()
        key = make_key("event:create")
        big = dict(SENTINEL, description="d" * 3000)
        assert_error(post_event(small_client, key, data=json.dumps(big)), 413, "payload_too_large")
        assert post_event(small_client, key).status_code == 202
    finally:
        monkeypatch.delenv("MAX_BODY_BYTES")
        reset_settings_cache()
    assert counts()["events"] == 1


# ------------------------------------------------------------------------------ authentication

def test_no_key_is_401(client):
    error = assert_error(post_event(client), 401, "unauthenticated")
    assert "X-API-Key" in error["message"]
    assert counts() == EMPTY


@pytest.mark.parametrize("key", ["nope", "im_00000000_" + "A" * 43, " "])
def test_unknown_key_is_401(client, make_key, key):
    make_key("admin")  # a real key exists; the presented one is not it
    response = client.post("/api/v1/events/sentinel", data=json.dumps(SENTINEL),
                           headers={"Content-Type": "application/json", "X-API-Key": key})
    assert_error(response, 401, "unauthenticated")
    assert counts() == EMPTY


def test_key_in_authorization_bearer_works_too(client, make_key):
    key = make_key("event:create")
    response = client.post("/api/v1/events/sentinel", data=json.dumps(SENTINEL),
                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    assert response.status_code == 202


def test_revoked_key_is_401_within_the_cache_ttl(client, make_key, monkeypatch):
    from app.services import auth

    monkeypatch.setattr(auth, "KEY_CACHE_TTL_SECS", 0.3)
    key = make_key("event:create")
    assert post_event(client, key).status_code == 202
    key_id = auth.list_api_keys()[-1].id
    assert auth.revoke_api_key(key_id)
    time.sleep(0.4)  # the per-process cache expires (10 s in production)
    assert_error(post_event(client, key, data=json.dumps(dict(SENTINEL, event_id="after-revoke"))), 401)
    assert counts()["events"] == 1


def test_keys_are_stored_as_hmac_digests_only(make_key, test_env):
    import hashlib
    import hmac

    key = make_key("event:create")
    with read_session() as session:
        rows = session.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(rows) == 1
    assert key not in json.dumps([dict(r) for r in rows], default=str)
    expected = hmac.new(test_env["API_KEY_SECRET"].encode(), key.encode(), hashlib.sha256).hexdigest()
    assert rows[0]["digest"] == expected


# ------------------------------------------------------------------------------ permissions

def test_missing_permission_is_403_and_writes_nothing(client, make_key):
    reader = make_key("incident:read", "incident:write")
    error = assert_error(post_event(client, reader), 403, "forbidden")
    assert "event:create" in error["message"]
    assert counts() == EMPTY


def test_incident_write_does_not_imply_read(client, make_key):
    writer = make_key("incident:write")
    creator = make_key("event:create")
    incident_id = post_event(client, creator).get_json()["incident_id"]
    for path in ("/api/v1/incidents", f"/api/v1/incidents/{incident_id}", f"/api/v1/incidents/{incident_id}/timeline",
                 f"/api/v1/incidents/{incident_id}/events"):
        assert_error(client.get(path, headers={"X-API-Key": writer}), 403, "forbidden")
    # ...but it may change the incident
    response = client.post(f"/api/v1/incidents/{incident_id}/acknowledge", json={"actor": "a"},
                           headers={"X-API-Key": writer})
    assert response.status_code == 200


def test_read_does_not_imply_write_and_event_create_implies_neither(client, make_key):
    reader = make_key("incident:read")
    creator = make_key("event:create")
    incident_id = post_event(client, creator).get_json()["incident_id"]
    before = counts()
    for key in (reader, creator):
        assert_error(client.post(f"/api/v1/incidents/{incident_id}/acknowledge", json={},
                                 headers={"X-API-Key": key}), 403)
        assert_error(client.patch(f"/api/v1/incidents/{incident_id}", json={"assignee": "x"},
                                  headers={"X-API-Key": key}), 403)
        assert_error(client.post("/api/v1/incidents", json={"title": "t", "severity": "P2"},
                                 headers={"X-API-Key": key}), 403)
    assert_error(client.get("/api/v1/incidents", headers={"X-API-Key": creator}), 403)
    assert client.get("/api/v1/incidents", headers={"X-API-Key": reader}).status_code == 200
    assert counts() == before


def test_admin_implies_every_permission(client, make_key):
    admin = make_key("admin")
    response = post_event(client, admin)
    assert response.status_code == 202
    incident_id = response.get_json()["incident_id"]
    headers = {"X-API-Key": admin}
    assert client.get("/api/v1/incidents", headers=headers).status_code == 200
    assert client.get(f"/api/v1/incidents/{incident_id}", headers=headers).status_code == 200
    assert client.post(f"/api/v1/incidents/{incident_id}/acknowledge", json={}, headers=headers).status_code == 200
    assert client.post("/api/v1/incidents", json={"title": "t", "severity": "P2"}, headers=headers).status_code == 201


def test_jwt_bearer_authenticates_with_its_permissions(client, db):
    from app.services.auth import create_token

    token = create_token("edge-agent-1", 60, ["event:create"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    assert client.post("/api/v1/events/sentinel", data=json.dumps(SENTINEL), headers=headers).status_code == 202
    assert_error(client.get("/api/v1/incidents", headers=headers), 403)
    expired = create_token("edge-agent-1", -10)
    assert_error(client.get("/api/v1/incidents", headers={"Authorization": f"Bearer {expired}"}), 401)
    assert_error(client.get("/api/v1/incidents", headers={"Authorization": "Bearer not.a.jwt"}), 401)


# ------------------------------------------------------------------------------ rate limits

def test_over_the_rate_limit_is_429_with_retry_after(client, make_key):
    key = make_key("event:create", rate_limit=60, burst=3)
    statuses = [post_event(client, key, data=json.dumps(dict(SENTINEL, event_id=f"rl-{i}"))).status_code
                for i in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    response = post_event(client, key, data=json.dumps(dict(SENTINEL, event_id="rl-x")))
    error = assert_error(response, 429, "rate_limited")
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 2  # 60/min refills one token a second
    assert error["details"]["retry_after_secs"] == retry_after
    assert counts()["events"] == 3
    time.sleep(retry_after + 0.1)
    assert post_event(client, key, data=json.dumps(dict(SENTINEL, event_id="rl-later"))).status_code == 202


def test_rate_limit_zero_means_unlimited(client, make_key):
    key = make_key("event:create", rate_limit=0, burst=1)
    statuses = {post_event(client, key, data=json.dumps(dict(SENTINEL, event_id=f"u-{i}"))).status_code
                for i in range(30)}
    assert statuses == {202}


def test_default_rate_limit_comes_from_the_configuration(make_key):
    from app.services.auth import list_api_keys

    make_key("event:create", rate_limit=None)
    [row] = list_api_keys()
    assert (row.requests_per_minute, row.burst) == (1000, 100)


def test_rate_limit_is_shared_across_processes_through_redis(client, make_key, test_env):
    """Another process (as another gunicorn worker would) sees the bucket this one emptied."""
    # one token a minute: the other process's start (imports: 20 s measured on a loaded machine)
    # must not outlast the refill, or the bucket has a token again
    key = make_key("event:create", rate_limit=1, burst=2)
    assert [post_event(client, key, data=json.dumps(dict(SENTINEL, event_id=f"sh-{i}"))).status_code
            for i in range(2)] == [202, 202]
    script = (
        "import json, sys\n"
        "from api import create_app\n"
        "client = create_app().test_client()\n"
        f"event = json.load(open({str(ROOT / 'tests' / 'fixtures' / 'sentinel-event.json')!r}))\n"
        "event['event_id'] = 'sh-other-process'\n"
        "r = client.post('/api/v1/events/sentinel', json=event, headers={'X-API-Key': sys.argv[1]})\n"
        "print(r.status_code, r.headers.get('Retry-After'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, key], cwd=ROOT, env={**os.environ, **test_env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    status, retry_after = out.stdout.split()
    assert status == "429" and int(retry_after) >= 1
    assert counts()["events"] == 2


def test_unknown_route_and_method_use_the_error_shape(client, make_key):
    assert_error(client.get("/api/v1/nope"), 404, "not_found")
    assert_error(client.delete("/api/v1/events/sentinel"), 405, "method_not_allowed")


@pytest.mark.parametrize("data", [
    b'{"event_id": "nul", "source": "s", "title": "a\\u0000b", "severity": "high"}',
    b'{"event_id": "nul", "source": "s", "title": "t", "severity": "high", "payload": {"k": "\\\\\\u0000"}}',
])
def test_nul_characters_are_422_not_a_database_error(client, make_key, data):
    key = make_key("event:create")
    for path in ("/api/v1/events/sentinel", "/api/v1/events"):
        error = assert_error(post_event(client, key, data=data, path=path), 422, "validation_failed")
        assert "NUL" in error["message"]
    assert counts() == EMPTY


def test_an_escaped_backslash_before_u0000_is_plain_text(client, make_key):
    key = make_key("event:create")
    data = b'{"event_id": "not-nul", "source": "s", "title": "C:\\\\u0000", "severity": "high"}'
    assert json.loads(data)["title"] == "C:\\u0000"
    assert post_event(client, key, data=data).status_code == 202
