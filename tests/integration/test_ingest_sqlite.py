"""The SQLite writer (the embedded default) answers as the Postgres one: repeats and stored
duplicates, one incident per fingerprint with its event_count, the timeline rule, numbers by arrival."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from app.adapters.db import read_session
from app.adapters.models import Event, Incident, OutboxMessage, TimelineEntry
from app.domain.ingest import NewEvent
from app.services.ingest import ingest_events


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from app.adapters.migrate import upgrade
    from tests.conftest import _reset_process_state

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'im.db'}")
    _reset_process_state()
    upgrade()
    yield
    monkeypatch.undo()
    _reset_process_state()


def ev(event_id: str, title: str) -> NewEvent:
    return NewEvent(source="llm-sentinel", event_id=event_id, title=title, raw={"event_id": event_id}, severity="high")


def test_sqlite_writer_answers_like_the_postgres_one(embedded):
    first = ingest_events([ev("e1", "Disk full"), ev("e2", "GPU lost"), ev("e1", "Disk full")])
    assert [r.status for r in first] == ["accepted", "accepted", "duplicate"]
    assert first[0].created and first[1].created and first[2].incident_id == first[0].incident_id
    assert first[0].incident_id.endswith("-00001") and first[1].incident_id.endswith("-00002")

    second = ingest_events([ev("e3", "GPU lost"), ev("e2", "GPU lost"), ev("e4", "GPU lost")])
    assert [(r.status, r.incident_id, r.created) for r in second] == [
        ("accepted", first[1].incident_id, False), ("duplicate", first[1].incident_id, False),
        ("accepted", first[1].incident_id, False)]
    with read_session() as session:
        counts = dict(session.execute(select(Incident.title, Incident.event_count)).all())
        kinds = session.execute(select(TimelineEntry.kind).where(TimelineEntry.incident_id == first[1].incident_id)
                                .order_by(TimelineEntry.id)).scalars().all()
        stored = session.execute(select(Event.event_id).order_by(Event.id)).scalars().all()
        outbox = session.execute(select(OutboxMessage.payload).order_by(OutboxMessage.id)).scalars().all()
    assert counts == {"Disk full": 1, "GPU lost": 3}
    assert kinds == ["created", "event_merged"]
    assert stored == ["e1", "e2", "e3", "e4"] and len(outbox) == 2


def test_sqlite_writer_assigns_a_manual_incident_like_the_postgres_one(embedded):
    from app.services.incidents import create_manual, incident_timeline

    def manual(event_id: str, assignee: str) -> NewEvent:
        return NewEvent(source="manual", event_id=event_id, title="Shared disk full", raw={}, severity="P3",
                        assignee=assignee, requested_by="ops-user")

    opened, created = create_manual(manual("m1", "bob"))
    assert created and opened["assignee"] == "bob"
    joined, created = create_manual(manual("m2", "carol"))
    assert not created and joined["id"] == opened["id"] and joined["assignee"] == "carol"
    create_manual(manual("m3", "carol"))
    assigned = [(t["actor"], t["old_value"], t["new_value"]) for t in incident_timeline(opened["id"])
                if t["kind"] == "assigned"]
    assert assigned == [("ops-user", None, "bob"), ("ops-user", "bob", "carol")]
