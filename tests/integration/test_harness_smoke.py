"""The harness itself: a Sentinel event reaches a real worker through Redis and is processed."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from app.adapters.db import read_session
from app.adapters.models import Event, OutboxMessage
from tests.conftest import wait_for

SENTINEL = json.loads((Path(__file__).parent.parent / "fixtures" / "sentinel-event.json").read_text())


def test_event_is_processed_by_a_real_worker(client, make_key, worker):
    key = make_key("event:create")
    response = client.post("/api/v1/events/sentinel", json=SENTINEL, headers={"X-API-Key": key})
    assert response.status_code == 202

    def processed():
        with read_session() as session:
            event = session.scalars(select(Event)).one()
            outbox = session.scalars(select(OutboxMessage)).one()
            return event.processed_at is not None and outbox.done_at is not None

    wait_for(processed, 30, message="the worker to process the event and close its outbox row")
