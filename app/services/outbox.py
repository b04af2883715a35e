"""The outbox: committed work waiting for (or being done by) a worker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Sequence

from sqlalchemy import select, update

from app.adapters.db import read_session, unit_of_work
from app.adapters.models import OutboxMessage


def event_ids_for(outbox_ids: Sequence[int]) -> list[int]:
    with read_session() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(list(outbox_ids))))
        ids: list[int] = []
        for row in rows:
            if row.done_at is None:
                ids.extend(int(i) for i in row.payload.get("event_ids", []))
        return ids


def mark_done(outbox_ids: Sequence[int]) -> None:
    if not outbox_ids:
        return
    with unit_of_work() as session:
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_(list(outbox_ids)), OutboxMessage.done_at.is_(None))
            .values(done_at=datetime.now(timezone.utc))
        )


def claim_stale(older_than_secs: int, limit: int = 500) -> list[int]:
    """Outbox rows not done `older_than_secs` after creation (or after the last relay): the relay
    re-sends them. Bumps attempts and created_at so a row is not re-sent on every sweep."""
    now = datetime.now(timezone.utc)
    cutoff = now - timedelta(seconds=older_than_secs)
    with unit_of_work() as session:
        query = (
            select(OutboxMessage)
            .where(OutboxMessage.done_at.is_(None), OutboxMessage.created_at < cutoff)
            .order_by(OutboxMessage.id)
            .limit(limit)
            # Two relays never take the same row; SQLite (one writer at a time) renders no FOR UPDATE.
            .with_for_update(skip_locked=True)
        )
        rows = list(session.scalars(query))
        for row in rows:
            row.attempts += 1
            row.created_at = now
            row.dispatched_at = now
        return [row.id for row in rows]


def pending_stats() -> tuple[int, float]:
    """(number of outbox rows not done, age in seconds of the oldest)."""
    from sqlalchemy import func

    with read_session() as session:
        count, oldest = session.execute(
            select(func.count(OutboxMessage.id), func.min(OutboxMessage.created_at))
            .where(OutboxMessage.done_at.is_(None))
        ).one()
    if not oldest:
        return int(count or 0), 0.0
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=timezone.utc)
    return int(count), max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
