"""Dead letters: task calls that ran out of retries, kept with their error, replayable."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select

from app.adapters.db import read_session, unit_of_work
from app.adapters.models import DeadLetter
from app.services.task_queue import TaskQueue


def record_dead_letter(task_name: str, queue: str | None, args: list[Any], kwargs: dict[str, Any],
                       exc: BaseException, traceback: str | None, attempts: int) -> int:
    with unit_of_work() as session:
        row = DeadLetter(
            task_name=task_name, queue=queue, args=json.loads(json.dumps(args, default=str)),
            kwargs=json.loads(json.dumps(kwargs, default=str)), error=f"{type(exc).__name__}: {exc}"[:10_000],
            traceback=(traceback or "")[-20_000:], attempts=attempts,
        )
        session.add(row)
        session.flush()
        return row.id


def list_dead_letters(include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
    with read_session() as session:
        query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
        if not include_replayed:
            query = query.where(DeadLetter.replayed_at.is_(None))
        return list(session.scalars(query))


def replay_dead_letters(queue: TaskQueue, ids: list[int] | None = None) -> list[int]:
    """Send dead-lettered calls again through `queue` (all unreplayed ones when `ids` is empty)."""
    replayed: list[int] = []
    with unit_of_work() as session:
        query = select(DeadLetter).where(DeadLetter.replayed_at.is_(None)).with_for_update()
        if ids:
            query = query.where(DeadLetter.id.in_(ids))
        for row in session.scalars(query):
            queue.send(row.task_name, list(row.args), dict(row.kwargs))
            row.replayed_at = datetime.now(timezone.utc)
            replayed.append(row.id)
    return replayed
