"""Users, teams, schedules and escalation policies over REST (real Postgres), who is on call across
the Europe/Berlin DST change and with an override, bad input, and the YAML import."""

from __future__ import annotations

import json
from typing import Any

import pytest

BERLIN_DAILY = {
    "name": "platform-primary", "time_zone": "Europe/Berlin",
    "layers": [{"name": "daily", "participants": ["alice", "bob"], "rotation_length": 1, "rotation_unit": "days",
                "handoff_time": "09:00", "start": "2027-03-20"}],
}


@pytest.fixture
def headers(admin_key: str) -> dict[str, str]:
    return {"X-API-Key": admin_key}


def post(client: Any, headers: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers=headers)


@pytest.fixture
def people(client: Any, headers: dict[str, str]) -> None:
    for name in ("alice", "bob", "carol", "dave"):
        assert post(client, headers, "/api/v1/users", {"name": name, "email": f"{name}@example.com"}).status_code == 201


def test_user_crud(client, headers):
    created = post(client, headers, "/api/v1/users", {"name": "alice", "email": "alice@example.com",
                                                      "contact": {"slack": "U123"}, "time_zone": "Europe/Berlin"})
    assert created.status_code == 201, created.get_json()
    assert created.headers["Location"] == "/api/v1/users/alice"
    assert post(client, headers, "/api/v1/users", {"name": "alice"}).status_code == 409
    got = client.get("/api/v1/users/alice", headers=headers).get_json()
    assert got["contact"] == {"slack": "U123"} and got["email"] == "alice@example.com"
    patched = client.patch("/api/v1/users/alice", json={"phone": "+49 30 1234"}, headers=headers)
    assert patched.status_code == 200 and patched.get_json()["phone"] == "+49 30 1234"
    assert patched.get_json()["email"] == "alice@example.com"  # PATCH keeps what it was not given
    replaced = client.put("/api/v1/users/alice", json={"full_name": "Alice A."}, headers=headers).get_json()
    assert replaced["email"] is None and replaced["full_name"] == "Alice A."  # PUT resets
    listed = client.get("/api/v1/users?limit=1", headers=headers).get_json()
    assert [u["name"] for u in listed["items"]] == ["alice"] and listed["next_cursor"] is None
    assert client.delete("/api/v1/users/alice", headers=headers).status_code == 204
    missing = client.get("/api/v1/users/alice", headers=headers)
    assert missing.status_code == 404 and missing.get_json()["error"]["details"] == {"name": "alice"}


def test_permissions(client, make_key):
    reader = {"X-API-Key": make_key("incident:read")}
    assert client.get("/api/v1/escalation-policies", headers=reader).status_code == 200
    assert client.post("/api/v1/users", json={"name": "x"}, headers=reader).status_code == 403
    assert client.get("/api/v1/teams").status_code == 401


def test_unknown_time_zone_is_named(client, headers, people):
    bad = dict(BERLIN_DAILY, time_zone="Europe/Atlantis")
    response = post(client, headers, "/api/v1/schedules", bad)
    assert response.status_code == 422
    assert "time_zone" in response.get_json()["error"]["details"]
    layer = dict(BERLIN_DAILY["layers"][0], time_zone="Mars/Olympus")
    response = post(client, headers, "/api/v1/schedules", dict(BERLIN_DAILY, layers=[layer]))
    assert response.status_code == 422
    assert "time_zone" in response.get_json()["error"]["details"]["layers"]["0"]


def test_schedule_with_unknown_participant_is_named(client, headers, people):
    layer = dict(BERLIN_DAILY["layers"][0], participants=["alice", "zed"])
    response = post(client, headers, "/api/v1/schedules", dict(BERLIN_DAILY, layers=[layer]))
    assert response.status_code == 422
    assert response.get_json()["error"]["details"] == {"layers[0].participants[1]": ["no user named 'zed'"]}


def test_policy_without_levels_is_named(client, headers):
    for levels in ([], None):
        body: dict[str, Any] = {"name": "p"} if levels is None else {"name": "p", "levels": levels}
        response = post(client, headers, "/api/v1/escalation-policies", body)
        assert response.status_code == 422
        assert "levels" in response.get_json()["error"]["details"]


def test_policy_cycle_is_refused(client, headers, people):
    level = {"targets": [{"type": "user", "id": "alice"}], "escalate_after_secs": 60}
    assert post(client, headers, "/api/v1/escalation-policies", {"name": "a", "levels": [level]}).status_code == 201
    # b -> a is fine; then a -> team t -> policy b -> a loops back
    to_a = {"targets": [{"type": "policy", "id": "a"}], "escalate_after_secs": 60}
    assert post(client, headers, "/api/v1/escalation-policies", {"name": "b", "levels": [to_a]}).status_code == 201
    assert post(client, headers, "/api/v1/teams", {"name": "t", "escalation_policy": "b"}).status_code == 201
    to_team = {"targets": [{"type": "team", "id": "t"}], "escalate_after_secs": 60}
    response = client.put("/api/v1/escalation-policies/a", json={"levels": [level, to_team]}, headers=headers)
    assert response.status_code == 422
    details = response.get_json()["error"]["details"]
    assert details == {"levels": ["escalation cycle: policy:a -> team:t -> policy:b -> policy:a"]}
    self_loop = {"targets": [{"type": "policy", "id": "c"}], "escalate_after_secs": 60}
    response = post(client, headers, "/api/v1/escalation-policies", {"name": "c", "levels": [self_loop]})
    assert response.status_code == 422
    assert "levels[0].targets[0].id" in response.get_json()["error"]["details"]
    # the stored policy is unchanged, and a referenced policy cannot be deleted
    assert len(client.get("/api/v1/escalation-policies/a", headers=headers).get_json()["levels"]) == 1
    conflict = client.delete("/api/v1/escalation-policies/a", headers=headers)
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["details"]["referenced_by"] == ["escalation policy b"]


def test_policy_update_bumps_version(client, headers, people):
    level = {"targets": [{"type": "user", "id": "alice"}], "escalate_after_secs": 60, "channels": ["slack"]}
    created = post(client, headers, "/api/v1/escalation-policies",
                   {"name": "p", "levels": [level], "repeat": 1, "conditions": {"severity": ["P0", "P1"]}}).get_json()
    assert created["version"] == 1 and created["levels"][0]["channels"] == ["slack"]
    changed = client.patch("/api/v1/escalation-policies/p", json={"repeat": 2}, headers=headers).get_json()
    assert changed["version"] == 2 and changed["repeat"] == 2 and changed["levels"] == created["levels"]
    bad = client.patch("/api/v1/escalation-policies/p", json={"conditions": {"severity": ["P9"]}}, headers=headers)
    assert bad.status_code == 422 and "conditions" in bad.get_json()["error"]["details"]
    # a PATCH may leave out the policy's fields, not a level's own: a level without targets is refused
    no_targets = client.patch("/api/v1/escalation-policies/p", json={"levels": [{"channels": ["slack"]}]},
                              headers=headers)
    assert no_targets.status_code == 422, no_targets.get_json()
    assert no_targets.get_json()["error"]["details"] == {
        "levels": {"0": {"targets": ["Missing data for required field."]}}}
    assert client.get("/api/v1/escalation-policies/p", headers=headers).get_json()["levels"] == created["levels"]


def oncall(client: Any, headers: dict[str, str], at: str, name: str = "platform-primary") -> dict[str, Any]:
    response = client.get(f"/api/v1/schedules/{name}/oncall?at={at}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_oncall_follows_local_handoff_across_berlin_dst(client, headers, people):
    assert post(client, headers, "/api/v1/schedules", BERLIN_DAILY).status_code == 201
    # Saturday 27 March 2027: CET, the 09:00 handoff is 08:00 UTC
    assert oncall(client, headers, "2027-03-27T07:59:00Z")["on_call"]["user"] == "alice"
    assert oncall(client, headers, "2027-03-27T08:00:00Z")["on_call"]["user"] == "bob"
    # Sunday 28 March 2027 (last Sunday of March): clocks go 02:00 -> 03:00; 09:00 CEST is 07:00 UTC.
    # A rotation counted in UTC days would still say bob at 07:30 UTC.
    sunday = oncall(client, headers, "2027-03-28T07:30:00Z")
    assert sunday["on_call"] == {"user": "alice", "source": "layer:daily", "shift_start": "2027-03-28T07:00:00Z",
                                 "shift_end": "2027-03-29T07:00:00Z"}
    assert sunday["local_time"] == "2027-03-28T09:30:00+02:00"
    # bob's Saturday shift lasted 23 hours
    assert oncall(client, headers, "2027-03-28T06:59:00Z")["on_call"]["shift_end"] == "2027-03-28T07:00:00Z"
    assert oncall(client, headers, "2027-03-29T07:00:00Z")["on_call"]["user"] == "bob"
    # before the layer starts nobody is on call
    assert oncall(client, headers, "2027-03-20T07:59:00Z")["on_call"] is None


def test_oncall_override_and_layers(client, headers, people):
    body = dict(BERLIN_DAILY, layers=BERLIN_DAILY["layers"] + [
        {"name": "weekend-cover", "participants": ["carol"], "rotation_length": 1, "rotation_unit": "weeks",
         "handoff_time": "00:00", "start": "2027-03-27", "end": "2027-03-28T05:00:00Z"}],
        overrides=[{"user": "dave", "start": "2027-03-28T08:00:00Z", "end": "2027-03-28T10:00:00Z"}])
    assert post(client, headers, "/api/v1/schedules", body).status_code == 201
    assert oncall(client, headers, "2027-03-27T12:00:00Z")["on_call"]["user"] == "carol"  # upper layer covers
    assert oncall(client, headers, "2027-03-28T06:00:00Z")["on_call"]["user"] == "bob"  # upper layer ended
    over = oncall(client, headers, "2027-03-28T08:30:00Z")["on_call"]
    assert over == {"user": "dave", "source": "override", "shift_start": "2027-03-28T08:00:00Z",
                    "shift_end": "2027-03-28T10:00:00Z"}
    assert oncall(client, headers, "2027-03-28T10:00:00Z")["on_call"]["user"] == "alice"
    bad = client.get("/api/v1/schedules/platform-primary/oncall?at=yesterday", headers=headers)
    assert bad.status_code == 422 and "at" in bad.get_json()["error"]["details"]
    assert client.get("/api/v1/schedules/nope/oncall", headers=headers).status_code == 404


CONFIG_YAML = """
users:
  - {name: alice, email: alice@example.com}
  - {name: bob, email: bob@example.com}
schedules:
  - name: primary
    time_zone: Europe/Berlin
    layers:
      - {participants: [alice, bob], rotation_length: 1, rotation_unit: weeks, handoff_time: "09:00", start: 2027-03-01}
teams:
  - {name: platform, members: [alice, bob], schedule: primary, escalation_policy: platform-default}
escalation_policies:
  - name: platform-default
    levels:
      - {name: L1 On-Call, targets: [{type: schedule, id: primary}], escalate_after_secs: 300,
         channels: [pagerduty, slack]}
      - {name: Lead, targets: [{type: user, id: bob}], escalate_after_secs: 900, channels: [pagerduty, sms]}
"""


def test_yaml_import_is_idempotent_and_all_or_nothing(db):
    from app.services import escalation_config as config

    first = config.import_yaml(CONFIG_YAML)
    assert first.created == {"users": ["alice", "bob"], "schedules": ["primary"], "teams": ["platform"],
                             "escalation_policies": ["platform-default"]}
    second = config.import_yaml(CONFIG_YAML)
    assert second.created == {} and second.updated == {}
    assert sum(len(v) for v in second.unchanged.values()) == 5
    assert config.get_object(config.POLICY, "platform-default")["version"] == 1
    changed = config.import_yaml(CONFIG_YAML.replace("escalate_after_secs: 900", "escalate_after_secs: 600"))
    assert changed.updated == {"escalation_policies": ["platform-default"]}
    assert config.get_object(config.POLICY, "platform-default")["version"] == 2
    with pytest.raises(config.ImportError_) as bad:
        config.import_yaml(CONFIG_YAML.replace("members: [alice, bob]", "members: [alice, zed]")
                           .replace("name: bob, email", "name: bobby, email"))
    assert "teams.platform" in bad.value.details
    assert config.get_object(config.USER, "bob")  # nothing of the bad document was written
    with pytest.raises(config.NotFound):
        config.get_object(config.USER, "bobby")


def test_cli_config_import(db, tmp_path):
    from tests.integration.test_cli import cli

    path = tmp_path / "oncall.yaml"
    path.write_text(CONFIG_YAML)
    first = json.loads(cli("config", "import", str(path)).stdout.splitlines()[-1])
    assert first["created"]["escalation_policies"] == ["platform-default"]
    again = json.loads(cli("config", "import", str(path)).stdout.splitlines()[-1])
    assert again["created"] == {} and again["updated"] == {}
    path.write_text(CONFIG_YAML.replace("time_zone: Europe/Berlin", "time_zone: Europe/Nowhere"))
    bad = cli("config", "import", str(path), check=False)
    assert bad.returncode == 1 and "time_zone" in bad.stderr


def test_a_level_without_escalate_after_secs_waits_the_configured_default(client, make_key, tmp_path, monkeypatch):
    """`escalation.default_timeout_secs` of config.yaml: the wait after a level that names none,
    taken into the incident's snapshot when its escalation starts (a sweep in this process)."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import select, text

    from app.adapters.db import read_session, unit_of_work
    from app.adapters.models import Incident
    from app.config import reset_settings_cache
    from app.services import escalation

    config = tmp_path / "config.yaml"
    config.write_text("escalation:\n  default_timeout_secs: 42\n")
    monkeypatch.setenv("CONFIG_FILE", str(config))
    reset_settings_cache()
    try:
        headers = {"X-API-Key": make_key("admin")}
        assert client.post("/api/v1/users", json={"name": "alice"}, headers=headers).status_code == 201
        policy = {"name": "defaults", "levels": [{"targets": [{"type": "user", "id": "alice"}]},
                                                 {"targets": [{"type": "user", "id": "alice"}],
                                                  "escalate_after_secs": 600}]}
        created = client.post("/api/v1/escalation-policies", json=policy, headers=headers)
        assert created.status_code == 201, created.get_json()
        now = datetime.now(timezone.utc)
        with unit_of_work() as session:
            session.execute(text(
                "INSERT INTO incidents (id, title, description, source, severity, status, fingerprint, event_count,"
                " first_seen, last_seen, created_at, updated_at, tags, sla_acknowledge_breached,"
                " sla_resolve_breached, escalation_level, escalation_policy, next_escalation_at)"
                " VALUES ('INC-20261206-00001', 't', '', 'monitoring', 'P0', 'NEW', 'fp', 1, :now, :now, :now,"
                " :now, '{}', false, false, 0, 'defaults', :due)"), {"now": now, "due": now - timedelta(seconds=1)})
        before = datetime.now(timezone.utc)
        assert escalation.sweep().fired == 1
        with read_session() as session:
            level, next_at = session.execute(select(Incident.escalation_level, Incident.next_escalation_at)
                                             .where(Incident.id == "INC-20261206-00001")).one()
        assert level == 1
        assert before + timedelta(seconds=42) <= next_at <= datetime.now(timezone.utc) + timedelta(seconds=42)
    finally:
        monkeypatch.delenv("CONFIG_FILE")
        reset_settings_cache()
