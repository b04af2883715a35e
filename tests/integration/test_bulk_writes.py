"""app/adapters/bulk.py, the one place that knows the SQL dialect: the same calls give the same rows
on Postgres (one statement per call) and on SQLite (the embedded default)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from app.adapters import bulk
from app.adapters.db import get_engine, read_session, unit_of_work
from app.adapters.models import JSONType, UTCDateTime

# A table of the test's own, with the column kinds the services write (text, int, JSON, time; nullable).
GROUPS = Table("bulk_probe", MetaData(), Column("id", String(40), primary_key=True),
               Column("root_incident_id", String(32), nullable=True), Column("score", Integer),
               Column("reasons", JSONType), Column("member_count", Integer), Column("created_at", UTCDateTime),
               Column("updated_at", UTCDateTime))
NOW = datetime(2026, 3, 29, 1, 30, tzinfo=timezone.utc)


@pytest.fixture(params=["postgres", "sqlite"])
def dialect(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from tests.conftest import _reset_process_state

    if request.param == "postgres":
        request.getfixturevalue("db")
    else:
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'bulk.db'}")
        _reset_process_state()
    GROUPS.create(get_engine())
    try:
        yield request.param
    finally:
        GROUPS.drop(get_engine())
        monkeypatch.undo()
        _reset_process_state()


def _group(gid: str, count: int, root: str | None) -> dict:
    return {"id": gid, "root_incident_id": root, "score": 9, "reasons": [{"strategy": "source"}],
            "member_count": count, "created_at": NOW, "updated_at": NOW}


def _rows() -> dict[str, tuple]:
    with read_session() as session:
        rows = session.execute(select(GROUPS.c.id, GROUPS.c.member_count, GROUPS.c.root_incident_id,
                                      GROUPS.c.reasons))
        return {r.id: (r.member_count, r.root_incident_id, r.reasons) for r in rows}


def test_insert_skips_existing_keys_and_returns_what_it_wrote(dialect):
    with unit_of_work() as session:
        assert bulk.insert_rows(session, GROUPS, [_group("CG-1", 1, "INC-1")], returning="id") == ["CG-1"]
    with unit_of_work() as session:
        written = bulk.insert_rows(session, GROUPS, [_group("CG-1", 5, "INC-9"), _group("CG-2", 2, "INC-2")],
                                   conflict_key="id", returning="id")
    assert written == ["CG-2"]
    assert _rows() == {"CG-1": (1, "INC-1", [{"strategy": "source"}]), "CG-2": (2, "INC-2", [{"strategy": "source"}])}


def test_update_adds_replaces_and_leaves_set_columns_alone(dialect):
    with unit_of_work() as session:
        bulk.insert_rows(session, GROUPS, [_group("CG-1", 1, None), _group("CG-2", 2, "INC-2"),
                                           _group("CG-3", 3, None)])
    with unit_of_work() as session:  # counters incremented, a constant for every row
        bulk.update_rows(session, GROUPS, "id",
                         [{"b_key": "CG-1", "member_count": 4}, {"b_key": "CG-2", "member_count": 1}],
                         {"updated_at": NOW + timedelta(seconds=5)}, add=("member_count",))
    with unit_of_work() as session:  # a root stamped only where none is set yet
        bulk.update_rows(session, GROUPS, "id", [{"b_key": "CG-1", "root_incident_id": "INC-7"},
                                                 {"b_key": "CG-2", "root_incident_id": "INC-8"}],
                         where_null=("root_incident_id",))
    assert _rows() == {"CG-1": (5, "INC-7", [{"strategy": "source"}]), "CG-2": (3, "INC-2", [{"strategy": "source"}]),
                       "CG-3": (3, None, [{"strategy": "source"}])}


def test_claim_rows_runs_a_skip_locked_claim_on_both(dialect):
    with unit_of_work() as session:
        bulk.insert_rows(session, GROUPS, [_group("CG-1", 1, None), _group("CG-2", 2, None)])
    sql = ("UPDATE bulk_probe SET member_count = 0 WHERE id IN (SELECT id FROM bulk_probe"
           " WHERE created_at < :now ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING id")
    with unit_of_work() as session:
        claimed = bulk.claim_rows(session, sql, {"now": NOW + timedelta(seconds=1), "limit": 1})
    assert [r[0] for r in claimed] == ["CG-1"]
    assert _rows()["CG-1"][0] == 0 and _rows()["CG-2"][0] == 2
