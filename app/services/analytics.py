"""Incident analytics: counts, MTTA, MTTR (mean, p50, p90) and SLA compliance over a creation-time
range, grouped by severity, category, team or source, computed in SQL (no incident row is loaded;
the statements, one per dialect, are in app/adapters/analytics_sql.py).
One service function: REST serves it, GraphQL's `incidentMetrics` too. `rollup` is beat's job that
keeps the daily rollup large ranges are answered from. See docs/escalation.md "Analytics"."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy.orm import Session

from app import metrics
from app.adapters import analytics_sql
from app.adapters.analytics_sql import PERCENTILES, metric_rows
from app.adapters.db import read_session, retry_on_conflict, unit_of_work
from app.config import get_settings
from app.domain.times import iso

log = logging.getLogger(__name__)

GROUP_BY = ("severity", "category", "team", "source")
DEFAULT_RANGE = timedelta(days=30)


class InvalidQuery(ValueError):
    def __init__(self, message: str, details: Mapping[str, list[str]]) -> None:
        super().__init__(message)
        self.details = dict(details)


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    total = int(row["total"] or 0)

    def ratio(breached: Any) -> float | None:
        return None if not total else round(1 - int(breached or 0) / total, 4)

    return {
        "count": total, "acknowledged": int(row["acknowledged"] or 0), "resolved": int(row["resolved"] or 0),
        "mtta_secs": {"mean": _round(row["mtta_mean"]), "p50": _round(row["mtta_p50"]), "p90": _round(row["mtta_p90"])},
        "mttr_secs": {"mean": _round(row["mttr_mean"]), "p50": _round(row["mttr_p50"]), "p90": _round(row["mttr_p90"])},
        "sla": {"acknowledge_breached": int(row["ack_breached"] or 0),
                "resolve_breached": int(row["resolve_breached"] or 0),
                "acknowledge_compliance": ratio(row["ack_breached"]),
                "resolve_compliance": ratio(row["resolve_breached"]),
                "compliance": ratio(row["any_breached"])},
    }


def incident_metrics(start: datetime | None, end: datetime | None, group_by: str | None = None,
                     session: Session | None = None) -> dict[str, Any]:
    """Metrics of the incidents created in [start, end) (default: the 30 days before now), not merged.
    MTTA counts acknowledged incidents, MTTR resolved or closed ones; compliance is the share of
    incidents without a breach (acknowledge, resolve, either)."""
    end = end or datetime.now(timezone.utc)
    start = start or end - DEFAULT_RANGE
    if group_by is not None and group_by not in GROUP_BY:
        raise InvalidQuery(f"group_by must be one of {', '.join(GROUP_BY)}",
                           {"group_by": [f"expected one of {', '.join(GROUP_BY)}"]})
    if start >= end:
        raise InvalidQuery("from must be before to", {"from": ["must be before `to`"]})
    if session is None:
        with read_session() as own:
            return incident_metrics(start, end, group_by, own)
    rows = metric_rows(session, group_by, start, end, get_settings().escalation.analytics_exact_max_incidents)
    return _answer(start, end, group_by, rows)


def _answer(start: datetime, end: datetime, group_by: str | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals = next((r for r in rows if r["is_total"]), None)
    groups = sorted((r for r in rows if not r["is_total"]), key=lambda r: (r["grp"] is None, str(r["grp"])))
    empty = {"total": 0, "acknowledged": 0, "resolved": 0, "mtta_mean": None, "mttr_mean": None,
             **{f"{m}_p{int(p * 100)}": None for m in ("mtta", "mttr") for p in PERCENTILES},
             "ack_breached": 0, "resolve_breached": 0, "any_breached": 0}
    return {
        "from": iso(start), "to": iso(end), "group_by": group_by,
        # "estimated": read from the daily rollup, p50/p90 within ±2.5 % (docs/escalation.md)
        "percentiles": totals["percentiles"] if totals else "exact",
        "totals": _metrics(totals or empty),
        "groups": [{"key": r["grp"], **_metrics(r)} for r in groups] if group_by else [],
    }


def rollup(now: datetime | None = None, limit: int = 31) -> dict[str, Any]:
    """Beat: roll up the closed days not rolled up yet and the rolled-up days whose incidents changed
    since (at most `limit` per run; the next run goes on). Each day is one transaction; a replayed
    or concurrent run recomputes a day to the same figures."""
    now = now or datetime.now(timezone.utc)
    settle = timedelta(seconds=get_settings().escalation.analytics_rollup_settle_secs)
    with read_session() as session:
        if not analytics_sql.rollup_supported(session):
            return {"days": 0, "incidents": 0, "supported": False}
        days = analytics_sql.rollup_due_days(session, now, settle, limit)
    began = time.perf_counter()
    incidents = 0
    for day in days:
        def run(day: Any = day) -> int:
            with unit_of_work() as session:
                return analytics_sql.rollup_day(session, day)
        incidents += retry_on_conflict("analytics.rollup", run)
        metrics.ANALYTICS_ROLLUP_DAYS.inc()
    seconds = time.perf_counter() - began
    with read_session() as session:
        dirty = analytics_sql.dirty_days(session)
    metrics.ANALYTICS_DIRTY_DAYS.set(dirty)
    if days:
        metrics.ANALYTICS_ROLLUP_DURATION.observe(seconds)
        log.info("analytics days rolled up", extra={"days": len(days), "first": str(days[0]), "last": str(days[-1]),
                                                   "incidents": incidents, "seconds": round(seconds, 3),
                                                   "dirty_days_left": dirty})
    return {"days": len(days), "incidents": incidents, "seconds": round(seconds, 3), "dirty_days": dirty,
            "supported": True}


# Closed days waiting beyond this: the rollup is not running (beat or the escalation queue's worker down).
ROLLUP_LATE_DAYS = 2


def rollup_state(now: datetime | None = None) -> dict[str, Any]:
    """For /health: the newest day rolled up, the settled days waiting, the changed days waiting."""
    now = now or datetime.now(timezone.utc)
    settle = timedelta(seconds=get_settings().escalation.analytics_rollup_settle_secs)
    with read_session() as session:
        if not analytics_sql.rollup_supported(session):
            return {"status": "off"}
        newest, waiting = analytics_sql.rollup_lag(session, now, settle)
        dirty = analytics_sql.dirty_days(session)
    return {"status": "down" if waiting > ROLLUP_LATE_DAYS else "up",
            "rolled_up_through": newest.isoformat() if newest else None, "days_waiting": waiting, "dirty_days": dirty}
