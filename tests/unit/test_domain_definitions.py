"""The one definition of each shared rule (docs/foundation.md, "One definition each")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from app.domain import sla
from app.domain.incident import (
    ACTIVE_STATUS_NAMES,
    ACTIVE_STATUSES,
    MAX_MERGE_HOPS,
    STATUS_NAMES,
    Status,
    follow_merges,
    status_in_sql,
)
from app.domain.times import iso, iso_from_epoch

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    id: str
    merged_into: str | None = None


def test_status_names_come_from_the_enum():
    assert STATUS_NAMES == ("NEW", "ACKNOWLEDGED", "IN_PROGRESS", "ESCALATED", "RESOLVED", "CLOSED")
    assert ACTIVE_STATUS_NAMES == tuple(s.value for s in ACTIVE_STATUSES)
    assert set(STATUS_NAMES) == {s.value for s in Status}


def test_active_status_sql_is_the_partial_index_predicate_verbatim():
    # ON CONFLICT ... WHERE must repeat the index's predicate; the migration froze it as text.
    migration = (ROOT / "migrations/versions/0001_core_tables.py").read_text()
    assert f'sa.text("{status_in_sql(ACTIVE_STATUSES)}")' in migration
    assert status_in_sql([Status.RESOLVED], column="i.status") == "i.status IN ('RESOLVED')"


def test_follow_merges_to_the_survivor():
    rows = {"a": Row("a", "b"), "b": Row("b", "c"), "c": Row("c")}
    assert follow_merges("a", rows.get) == rows["c"]
    assert follow_merges("c", rows.get) == rows["c"]


def test_follow_merges_missing_or_cyclic_is_none():
    assert follow_merges("x", {}.get) is None
    assert follow_merges("a", {"a": Row("a", "gone")}.get) is None
    cycle = {"a": Row("a", "b"), "b": Row("b", "a")}
    seen: list[str] = []
    assert follow_merges("a", lambda i: seen.append(i) or cycle.get(i)) is None
    assert len(seen) == MAX_MERGE_HOPS  # bounded, never a loop


def test_iso_is_utc_with_z():
    moment = datetime(2026, 12, 6, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert iso(moment) == "2026-12-06T01:04:05.123456Z"
    assert iso(None) is None
    assert iso_from_epoch(0) == "1970-01-01T00:00:00Z"


def test_sla_deadline_fields_run_from_creation():
    created = datetime(2026, 12, 6, tzinfo=timezone.utc)
    fields = sla.deadline_fields("P0", created)
    assert fields == {"sla_acknowledge_by": created + timedelta(minutes=5),
                      "sla_resolve_by": created + timedelta(minutes=15)}
