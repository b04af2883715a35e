"""The unit every pipeline stage takes and returns: a JSON-safe dict carried in the task arguments.

    {
      "outbox_ids": [int],           # the outbox rows this batch completes
      "event_ids": [int],            # the batch's events not yet processed
      "incidents": [Snapshot],       # incidents seen for the first time (processed_at IS NULL)
      "touched": [str],              # incidents the batch's events joined that were processed before
      "classification": {id: {...}}, "enrichment": {id: {...}},
      "correlation": {id: {...}}, "routing": {id: {...}}
    }

Stages add their results per incident; `route` writes each incident row once at the end.
"""

from __future__ import annotations

from typing import Any, Sequence, TypedDict

from sqlalchemy import select

from app.adapters.bulk import one_of
from app.adapters.db import read_session
from app.adapters.models import OutboxMessage


class Snapshot(TypedDict):
    """What later stages need to know of a new incident (read once by dedup)."""

    id: str
    title: str
    description: str
    source: str
    event_type: str | None
    category: str | None
    severity: str
    source_severity: str | None
    service: str | None
    resource_type: str | None
    resource_id: str | None
    tags: dict[str, Any]
    metrics: dict[str, Any]
    team: str | None
    escalation_policy: str | None
    created_at: str  # ISO 8601


Batch = dict[str, Any]


def empty_batch(outbox_ids: Sequence[int]) -> Batch:
    return {"outbox_ids": sorted(set(int(i) for i in outbox_ids)), "event_ids": [], "incidents": [], "touched": [],
            "classification": {}, "enrichment": {}, "correlation": {}, "routing": {}}


def pack_outbox(outbox_ids: Sequence[int], max_events: int) -> list[list[int]]:
    """Split outbox ids into groups of at most `max_events` events (a group holds at least one row),
    so that a few big HTTP batches and many small requests both make tasks of a useful size."""
    ids = sorted(set(int(i) for i in outbox_ids))
    if not ids:
        return []
    with read_session() as session:
        sizes = {row.id: len((row.payload or {}).get("event_ids", []))
                 for row in session.execute(
                     select(OutboxMessage.id, OutboxMessage.payload).where(one_of(OutboxMessage.id, ids)))}
    groups: list[list[int]] = []
    current: list[int] = []
    count = 0
    for outbox_id in ids:
        size = sizes.get(outbox_id, 0)
        if current and count + size > max_events:
            groups.append(current)
            current, count = [], 0
        current.append(outbox_id)
        count += size
    if current:
        groups.append(current)
    return groups
