"""The escalation engine with a real beat and real workers (short intervals): levels fire at their
offsets, acknowledge and pause stop them, concurrent and replayed sweeps never page a level twice,
a beat restart loses nothing, SLA breaches are flagged once."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from app.adapters.db import get_engine, read_session
from app.adapters.escalation_models import NotificationDelivery
from app.adapters.models import Incident, TimelineEntry
from tests.conftest import wait_for

SWEEP_SECS = 0.5


@pytest.fixture
def fast_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESCALATION_SWEEP_SECS", str(SWEEP_SECS))
    monkeypatch.setenv("SLA_CHECK_SECS", str(SWEEP_SECS))


@pytest.fixture
def headers(admin_key: str) -> dict[str, str]:
    return {"X-API-Key": admin_key}


def setup_policy(client: Any, headers: dict[str, str], first_after: int = 3, name: str = "two-levels") -> None:
    for user in ("alice", "bob", "carol"):
        client.post("/api/v1/users", json={"name": user}, headers=headers)
    policy = {"name": name, "levels": [
        {"name": "L1", "targets": [{"type": "user", "id": "alice"}], "escalate_after_secs": first_after,
         "channels": ["email", "slack"]},
        {"name": "L2", "targets": [{"type": "user", "id": "bob"}], "escalate_after_secs": 3600, "channels": ["sms"]},
    ]}
    assert client.post("/api/v1/escalation-policies", json=policy, headers=headers).status_code == 201
    assert client.post("/api/v1/teams", json={"name": f"team-{name}", "escalation_policy": name},
                       headers=headers).status_code == 201


def open_incident(client: Any, headers: dict[str, str], team: str = "team-two-levels") -> str:
    response = client.post("/api/v1/incidents", json={"title": f"GPU OOM {uuid.uuid4().hex[:6]}",
                                                       "severity": "critical", "team": team}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def escalations(incident_id: str) -> list[tuple[int, datetime, dict[str, Any]]]:
    with read_session() as session:
        rows = session.execute(select(TimelineEntry.new_value, TimelineEntry.at, TimelineEntry.details).where(
            TimelineEntry.incident_id == incident_id, TimelineEntry.kind == "escalated").order_by(TimelineEntry.id))
        return [(int(v), at, details) for v, at, details in rows]


def deliveries(incident_id: str) -> list[tuple[str, str, str]]:
    with read_session() as session:
        return [tuple(r) for r in session.execute(  # type: ignore[misc]
            select(NotificationDelivery.step, NotificationDelivery.recipient, NotificationDelivery.channel)
            .where(NotificationDelivery.incident_id == incident_id).order_by(NotificationDelivery.id))]


def level_of(incident_id: str) -> int:
    with read_session() as session:
        return int(session.scalar(select(Incident.escalation_level).where(Incident.id == incident_id)) or 0)


def test_levels_fire_at_their_offsets_from_a_snapshot(client, headers, fast_beat, start_worker):
    setup_policy(client, headers, first_after=3)
    start_worker(beat=True)
    incident_id = open_incident(client, headers)
    first = wait_for(lambda: escalations(incident_id), 30, 0.1, "level 1")
    assert first[0][0] == 1
    assert first[0][2]["paged"] == [{"user": "alice", "via": "user:alice"}]
    assert first[0][2]["reason"] == "escalation started (the policy of team team-two-levels)"
    # an edit of the policy now does not change this incident's escalation (it keeps its snapshot)
    changed = {"levels": [{"targets": [{"type": "user", "id": "carol"}], "escalate_after_secs": 1}]}
    assert client.patch("/api/v1/escalation-policies/two-levels", json=changed, headers=headers).status_code == 200
    both = wait_for(lambda: len(escalations(incident_id)) >= 2 and escalations(incident_id), 30, 0.1, "level 2")
    (_, t1, _), (level2, t2, details) = both
    assert level2 == 2
    offset = (t2 - t1).total_seconds()
    # due 3 s after level 1; the sweep runs every 0.5 s (one more interval for beat and worker latency)
    assert 3.0 <= offset <= 3.0 + 2 * SWEEP_SECS, offset
    assert details["paged"] == [{"user": "bob", "via": "user:bob"}]
    assert details["reason"] == "level 1 not acknowledged within 3s"
    assert deliveries(incident_id) == [("c0.l1", "alice", "email"), ("c0.l1", "alice", "slack"),
                                       ("c0.l2", "bob", "sms")]
    incident = client.get(f"/api/v1/incidents/{incident_id}", headers=headers).get_json()
    assert incident["status"] == "ESCALATED" and incident["escalation"]["level"] == 2
    state = client.get(f"/api/v1/incidents/{incident_id}/escalation", headers=headers).get_json()
    assert state["state"] == "active" and state["policy"]["version"] == 1 and len(state["deliveries"]) == 3


def test_acknowledge_between_levels_stops_escalation(client, headers, fast_beat, start_worker):
    setup_policy(client, headers, first_after=2)
    start_worker(beat=True)
    acked, control = open_incident(client, headers), open_incident(client, headers)
    wait_for(lambda: level_of(acked) == 1 and level_of(control) == 1, 30, 0.1, "level 1 of both")
    assert client.post(f"/api/v1/incidents/{acked}/acknowledge", json={"actor": "alice"},
                       headers=headers).status_code == 200
    # the control incident reaching level 2 proves the sweep ran past the acknowledged one's due time
    wait_for(lambda: level_of(control) == 2, 30, 0.1, "level 2 of the control incident")
    wait_for(lambda: len(escalations(control)) == 2, 10, 0.1)
    assert [e[0] for e in escalations(acked)] == [1]
    assert [d[0] for d in deliveries(acked)] == ["c0.l1", "c0.l1"]
    state = client.get(f"/api/v1/incidents/{acked}/escalation", headers=headers).get_json()
    assert state["state"] == "stopped" and state["next_escalation_at"] is None


def test_pause_resume_and_escalate_now(client, headers, fast_beat, start_worker):
    setup_policy(client, headers, first_after=2)
    start_worker(beat=True)
    paused, control = open_incident(client, headers), open_incident(client, headers)
    wait_for(lambda: level_of(paused) == 1 and level_of(control) == 1, 30, 0.1, "level 1 of both")
    response = client.post(f"/api/v1/incidents/{paused}/escalation/pause", headers=headers)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == "paused" and response.get_json()["next_escalation_at"] is None
    assert client.post(f"/api/v1/incidents/{paused}/escalation/pause", headers=headers).status_code == 409
    wait_for(lambda: level_of(control) == 2, 30, 0.1, "level 2 of the control incident")
    assert level_of(paused) == 1
    resumed = client.post(f"/api/v1/incidents/{paused}/escalation/resume", headers=headers)
    assert resumed.status_code == 200 and resumed.get_json()["state"] == "active"
    assert client.post(f"/api/v1/incidents/{paused}/escalation/resume", headers=headers).status_code == 409
    wait_for(lambda: level_of(paused) == 2, 30, 0.1, "level 2 after resume")
    kinds = [e["kind"] for e in client.get(f"/api/v1/incidents/{paused}/timeline", headers=headers)
             .get_json()["items"] if e["kind"].startswith("escalat")]
    assert kinds == ["escalation_started", "escalated", "escalation_paused", "escalation_resumed", "escalated"]
    # level 2 is the last: escalate now repeats nothing (repeat 0) and says so
    now = client.post(f"/api/v1/incidents/{paused}/escalation/escalate", headers=headers)
    assert now.status_code == 409, now.get_json()
    fresh = open_incident(client, headers)
    wait_for(lambda: level_of(fresh) == 1, 30, 0.1, "level 1 of the fresh incident")
    bumped = client.post(f"/api/v1/incidents/{fresh}/escalation/escalate", headers=headers)
    assert bumped.status_code == 200 and bumped.get_json()["level"] == 2
    assert escalations(fresh)[-1][2]["reason"].startswith("escalated by ")
    client.post(f"/api/v1/incidents/{fresh}/resolve", json={"resolved_by": "alice"}, headers=headers)
    assert client.post(f"/api/v1/incidents/{fresh}/escalation/escalate", headers=headers).status_code == 409
    assert client.post("/api/v1/incidents/INC-20000101-00001/escalation/pause", headers=headers).status_code == 404


def insert_due(count: int, policy: str, due: datetime) -> list[str]:
    """Open incidents due for paging (as ingest's auto-page leaves them, before the route stage)."""
    now = datetime.now(timezone.utc)
    rows = [{"id": f"INC-20270101-{i:05d}", "title": f"t{i}", "description": "", "source": "bench",
             "severity": "P1", "status": "NEW", "fingerprint": uuid.uuid4().hex, "event_count": 1,
             "first_seen": now, "last_seen": now, "created_at": now, "updated_at": now, "tags": {},
             "escalation_policy": policy, "next_escalation_at": due, "escalation_level": 0,
             "sla_acknowledge_breached": False, "sla_resolve_breached": False} for i in range(1, count + 1)]
    with get_engine().begin() as conn:
        conn.execute(insert(Incident), rows)
    return [r["id"] for r in rows]


def test_concurrent_and_replayed_sweeps_page_each_level_once(client, headers, start_worker):
    from tasks.celery_app import app
    from tasks.escalation import sweep

    setup_policy(client, headers, first_after=3600)
    ids = insert_due(3000, "two-levels", datetime.now(timezone.utc))
    workers = [start_worker(queues="escalation", concurrency=2) for _ in range(2)]
    assert len(workers) == 2
    for _ in range(8):  # four processes sweep at once
        app.send_task("escalation.sweep")

    def paged() -> int:
        with read_session() as session:
            return int(session.scalar(select(func.count()).select_from(Incident).where(
                Incident.escalation_level == 1)) or 0)

    wait_for(lambda: paged() == len(ids), 60, 0.2, "every incident at level 1")
    assert sweep.run()["fired"] == 0  # a replay finds nothing due
    with read_session() as session:
        per_incident = session.execute(text(
            "SELECT count(*) FILTER (WHERE kind = 'escalated'), count(DISTINCT incident_id)"
            " FROM incident_timeline WHERE kind = 'escalated'")).one()
        pages = session.execute(text("SELECT count(*), count(DISTINCT incident_id) FROM notification_deliveries")).one()
    assert tuple(per_incident) == (len(ids), len(ids))
    assert tuple(pages) == (2 * len(ids), len(ids))  # alice on email and slack, once each


def test_beat_restart_loses_no_due_escalation(client, headers, fast_beat, start_worker):
    setup_policy(client, headers, first_after=3)
    first = start_worker(beat=True)
    incident_id = open_incident(client, headers)
    wait_for(lambda: level_of(incident_id) == 1, 30, 0.1, "level 1")
    first.stop()
    with read_session() as session:
        due = session.scalar(select(Incident.next_escalation_at).where(Incident.id == incident_id))
    assert due is not None
    wait_for(lambda: datetime.now(timezone.utc) > due + timedelta(seconds=1), 10, 0.1, "the due time to pass")
    assert level_of(incident_id) == 1  # nobody swept while beat was down
    start_worker(beat=True)
    wait_for(lambda: level_of(incident_id) == 2, 30, 0.1, "level 2 after the restart")
    assert [e[0] for e in escalations(incident_id)] == [1, 2]


def sla_rows(incident_id: str) -> list[dict[str, Any]]:
    with read_session() as session:
        return [d for (d,) in session.execute(select(TimelineEntry.details).where(
            TimelineEntry.incident_id == incident_id, TimelineEntry.kind == "sla_breached"))]


def breaches_metric(client: Any, headers: dict[str, str], target: str, severity: str) -> float:
    for line in client.get("/metrics", headers=headers).get_data(as_text=True).splitlines():
        if line.startswith("incident_manager_sla_breaches_total{") and f'target="{target}"' in line \
                and f'severity="{severity}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sla_breach_is_flagged_exactly_once(client, headers, fast_beat, start_worker):
    before = breaches_metric(client, headers, "acknowledge", "P1")
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    late, later = insert_due(2, "none", datetime.now(timezone.utc) + timedelta(days=1))
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE incidents SET sla_acknowledge_by = :t, sla_resolve_by = :r WHERE id = :id"),
                     {"t": past, "r": past + timedelta(hours=1), "id": late})
        conn.execute(text("UPDATE incidents SET sla_acknowledge_by = :t, sla_resolve_by = :r WHERE id = :id"),
                     {"t": past + timedelta(seconds=3), "r": past + timedelta(hours=1), "id": later})
    start_worker(beat=True)
    wait_for(lambda: sla_rows(late), 30, 0.1, "the first breach")
    wait_for(lambda: sla_rows(later), 30, 0.1, "the second breach (checks kept running)")
    rows = sla_rows(late)
    assert len(rows) == 1 and rows[0]["target"] == "acknowledge" and rows[0]["severity"] == "P1"
    incident = client.get(f"/api/v1/incidents/{late}", headers=headers).get_json()
    assert incident["sla"]["acknowledgment_breached"] is True and incident["sla"]["resolution_breached"] is False
    # acknowledging late sets nothing twice
    client.post(f"/api/v1/incidents/{late}/acknowledge", json={"actor": "alice"}, headers=headers)
    assert len(sla_rows(late)) == 1
    assert breaches_metric(client, headers, "acknowledge", "P1") - before == 2


def test_acknowledge_after_the_deadline_flags_the_breach_itself(client, headers):
    (incident_id,) = insert_due(1, "none", datetime.now(timezone.utc) + timedelta(days=1))
    with get_engine().begin() as conn:
        conn.execute(text("UPDATE incidents SET sla_acknowledge_by = now() - interval '1 minute' WHERE id = :id"),
                     {"id": incident_id})
    assert client.post(f"/api/v1/incidents/{incident_id}/acknowledge", json={"actor": "alice"},
                       headers=headers).status_code == 200
    rows = sla_rows(incident_id)
    assert len(rows) == 1 and rows[0]["target"] == "acknowledge" and rows[0]["overdue_secs"] >= 60
    from app.services.sla_monitor import check

    assert check()["acknowledge"] == 0  # acknowledged: nothing left for the check
