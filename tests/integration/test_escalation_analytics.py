"""Incident analytics in SQL: the figures equal numpy's over the same rows, on Postgres (percentile_cont)
and on SQLite (the window-function interpolation of the embedded default)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from app.adapters.db import get_engine, import_all_models
from app.adapters.models import Base, Incident

START = datetime(2027, 3, 1, tzinfo=timezone.utc)


def make_rows(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        created = START + timedelta(minutes=i)
        status = rng.choice(["NEW", "ACKNOWLEDGED", "RESOLVED", "CLOSED"])
        acked = created + timedelta(seconds=rng.randint(5, 900)) if status != "NEW" else None
        resolved = created + timedelta(seconds=rng.randint(900, 20_000)) if status in ("RESOLVED", "CLOSED") else None
        rows.append({
            "id": f"INC-20270301-{i + 1:05d}", "title": "t", "description": "",
            "source": rng.choice(["sentinel", "shield"]),
            "severity": rng.choice(["P0", "P1", "P2"]), "category": rng.choice(["performance", None]),
            "team": rng.choice(["ml", "platform"]), "status": status, "fingerprint": f"fp{i}", "event_count": 1,
            "first_seen": created, "last_seen": created, "created_at": created, "updated_at": created, "tags": {},
            "acknowledged_at": acked, "resolved_at": resolved, "escalation_level": 0,
            "sla_acknowledge_breached": rng.random() < 0.2, "sla_resolve_breached": rng.random() < 0.1,
            "merged_into": "INC-20270301-00001" if i == count - 1 else None,  # merged: not counted
        })
    return rows


def expected(rows: list[dict[str, Any]], key: str | None) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if row["merged_into"] is None:
            groups.setdefault(row[key] if key else "all", []).append(row)
    for group, members in groups.items():
        mtta = [(r["acknowledged_at"] - r["created_at"]).total_seconds() for r in members if r["acknowledged_at"]]
        mttr = [(r["resolved_at"] - r["created_at"]).total_seconds() for r in members if r["resolved_at"]]
        out[group] = {
            "count": len(members),
            "mtta_secs": {"mean": round(float(np.mean(mtta)), 3), "p50": round(float(np.percentile(mtta, 50)), 3),
                          "p90": round(float(np.percentile(mtta, 90)), 3)},
            "mttr_secs": {"mean": round(float(np.mean(mttr)), 3), "p50": round(float(np.percentile(mttr, 50)), 3),
                          "p90": round(float(np.percentile(mttr, 90)), 3)},
            "compliance": round(1 - sum(1 for r in members if r["sla_acknowledge_breached"]
                                        or r["sla_resolve_breached"]) / len(members), 4),
        }
    return out


def check(result: dict[str, Any], rows: list[dict[str, Any]], key: str | None) -> None:
    want = expected(rows, key)
    got = {g["key"]: g for g in result["groups"]} if key else {"all": result["totals"]}
    assert set(got) == set(want)
    for group, figures in want.items():
        assert got[group]["count"] == figures["count"]
        for metric in ("mtta_secs", "mttr_secs"):
            for stat in ("mean", "p50", "p90"):
                assert got[group][metric][stat] == pytest.approx(figures[metric][stat], abs=0.01), (group, metric, stat)
        assert got[group]["sla"]["compliance"] == figures["compliance"]
    if key:
        assert result["totals"]["count"] == sum(f["count"] for f in want.values())


def test_postgres_metrics_match_numpy(client, admin_key):
    rows = make_rows(400)
    with get_engine().begin() as conn:
        conn.execute(insert(Incident), rows)
    headers = {"X-API-Key": admin_key}
    for key in (None, "severity", "category", "team", "source"):
        query = "from=2027-03-01T00:00:00Z&to=2027-03-02T00:00:00Z" + (f"&group_by={key}" if key else "")
        response = client.get(f"/api/v1/metrics/incidents?{query}", headers=headers)
        assert response.status_code == 200, response.get_json()
        check(response.get_json(), rows, key)
    bad = client.get("/api/v1/metrics/incidents?group_by=colour", headers=headers)
    assert bad.status_code == 422 and "group_by" in bad.get_json()["error"]["details"]
    backwards = client.get("/api/v1/metrics/incidents?from=2027-03-02T00:00:00Z&to=2027-03-01T00:00:00Z",
                           headers=headers)
    assert backwards.status_code == 422 and "from" in backwards.get_json()["error"]["details"]
    empty = client.get("/api/v1/metrics/incidents?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&group_by=team",
                       headers=headers).get_json()
    assert empty["groups"] == [] and empty["totals"]["count"] == 0 and empty["totals"]["mtta_secs"]["p50"] is None


def test_sqlite_metrics_match_numpy(tmp_path):
    from app.services.analytics import incident_metrics

    import_all_models()
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    Base.metadata.create_all(engine)
    rows = make_rows(300, seed=11)
    with Session(engine) as session:
        session.execute(insert(Incident), rows)
        session.commit()
        end = START + timedelta(days=1)
        for key in (None, "severity", "team", "category"):
            check(incident_metrics(START, end, key, session=session), rows, key)
