"""Incident analytics: counts, MTTA, MTTR (mean, p50, p90) and SLA compliance over a creation-time
range, grouped by severity, category, team or source, computed in SQL (no incident row is loaded).
One service function: REST serves it, GraphQL's `incidentMetrics` will too. See docs/escalation.md.

Postgres: one statement, `percentile_cont` per group and `GROUPING SETS` for the totals; it reads
only `ix_incidents_analytics` (created_at INCLUDE the columns below), an index-only scan.
SQLite (the embedded default) has no `percentile_cont`: the same interpolation (value at rank
p*(n-1), linear between its neighbours) is computed with ROW_NUMBER() / COUNT() windows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.adapters.db import read_session
from app.domain.incident import TERMINAL_STATUSES, status_in_sql
from app.domain.times import iso

GROUP_BY = ("severity", "category", "team", "source")
PERCENTILES = (0.5, 0.9)
DEFAULT_RANGE = timedelta(days=30)
_TERMINAL = status_in_sql(TERMINAL_STATUSES)


class InvalidQuery(ValueError):
    def __init__(self, message: str, details: Mapping[str, list[str]]) -> None:
        super().__init__(message)
        self.details = dict(details)


def _pg_sql(group_by: str | None) -> str:
    key = group_by or "NULL"
    # date_part is float8; EXTRACT is numeric since Postgres 14, and sorting numerics for the
    # percentiles took twice as long (measured: docs/escalation.md).
    ack = "date_part('epoch', acknowledged_at - created_at)"
    res = f"CASE WHEN {_TERMINAL} THEN date_part('epoch', resolved_at - created_at) END"
    # One sort per metric for both percentiles (an array of fractions), not one per percentile.
    fractions = ", ".join(str(p) for p in PERCENTILES)
    pct = ", ".join(f"percentile_cont(ARRAY[{fractions}]) WITHIN GROUP (ORDER BY {expr}) AS {name}_pct"
                    for name, expr in (("mtta", ack), ("mttr", res)))
    grouping = f"GROUP BY GROUPING SETS (({key}), ())" if group_by else ""
    return (
        f"SELECT {key} AS grp, {'GROUPING(' + key + ')' if group_by else '1'} AS is_total, count(*) AS total,"
        f" count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged,"
        f" count(*) FILTER (WHERE {_TERMINAL}) AS resolved,"
        f" avg({ack}) AS mtta_mean, avg({res}) AS mttr_mean, {pct},"
        f" count(*) FILTER (WHERE sla_acknowledge_breached) AS ack_breached,"
        f" count(*) FILTER (WHERE sla_resolve_breached) AS resolve_breached,"
        f" count(*) FILTER (WHERE sla_acknowledge_breached OR sla_resolve_breached) AS any_breached"
        f" FROM incidents WHERE created_at >= :start AND created_at < :end AND merged_into IS NULL {grouping}"
    )


def _sqlite_sql(group_by: str | None) -> str:
    key = group_by or "NULL"
    ack = "(julianday(acknowledged_at) - julianday(created_at)) * 86400.0"
    res = f"CASE WHEN {_TERMINAL} THEN (julianday(resolved_at) - julianday(created_at)) * 86400.0 END"
    where = "created_at >= :start AND created_at < :end AND merged_into IS NULL"
    ranked = ", ".join(
        f"{name} AS (SELECT grp, v, ROW_NUMBER() OVER (PARTITION BY grp ORDER BY v) - 1 AS i,"
        f" COUNT(*) OVER (PARTITION BY grp) AS n FROM (SELECT {key} AS grp, {expr} AS v FROM incidents"
        f" WHERE {where}) WHERE v IS NOT NULL)"
        for name, expr in (("r_mtta", ack), ("r_mttr", res)))

    def interpolate(name: str, p: float) -> str:
        pos, low = f"({p} * (n - 1))", f"CAST({p} * (n - 1) AS INTEGER)"
        return (f"(SELECT SUM(CASE WHEN i = {low} THEN v * (1 - ({pos} - {low})) WHEN i = {low} + 1"
                f" THEN v * ({pos} - {low}) END) FROM r_{name} WHERE r_{name}.grp IS g.grp) AS {name}_p{int(p * 100)}")

    pct = ", ".join(interpolate(name, p) for name in ("mtta", "mttr") for p in PERCENTILES)
    return (
        f"WITH {ranked}, g AS (SELECT {key} AS grp, count(*) AS total,"
        f" count(acknowledged_at) AS acknowledged, sum(CASE WHEN {_TERMINAL} THEN 1 ELSE 0 END) AS resolved,"
        f" avg({ack}) AS mtta_mean, avg({res}) AS mttr_mean,"
        f" sum(sla_acknowledge_breached) AS ack_breached, sum(sla_resolve_breached) AS resolve_breached,"
        f" sum(CASE WHEN sla_acknowledge_breached OR sla_resolve_breached THEN 1 ELSE 0 END) AS any_breached"
        f" FROM incidents WHERE {where} GROUP BY {key})"
        f" SELECT g.grp, 0 AS is_total, g.total, g.acknowledged, g.resolved, g.mtta_mean, g.mttr_mean, {pct},"
        f" g.ack_breached, g.resolve_breached, g.any_breached FROM g"
    )


def _spread(row: dict[str, Any]) -> dict[str, Any]:
    """`mtta_pct` = [p50, p90] -> `mtta_p50`, `mtta_p90` (the SQLite query's names)."""
    for name in ("mtta", "mttr"):
        values = row.pop(f"{name}_pct") or [None] * len(PERCENTILES)
        row.update({f"{name}_p{int(p * 100)}": v for p, v in zip(PERCENTILES, values, strict=True)})
    return row


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
    postgres = session.get_bind().dialect.name == "postgresql"
    params: dict[str, Any] = {"start": start, "end": end}
    if not postgres:  # SQLite stores naive UTC text
        params = {k: v.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ") for k, v in params.items()}
    if postgres:
        rows = [_spread(dict(r._mapping)) for r in session.execute(text(_pg_sql(group_by)), params)]
    else:
        rows = [dict(r._mapping) for r in session.execute(text(_sqlite_sql(group_by)), params)]
        if group_by:
            rows += [{**dict(r._mapping), "is_total": 1} for r in session.execute(text(_sqlite_sql(None)), params)]
    totals = next((r for r in rows if r["is_total"]), None)
    groups = sorted((r for r in rows if not r["is_total"]), key=lambda r: (r["grp"] is None, str(r["grp"])))
    empty = {"total": 0, "acknowledged": 0, "resolved": 0, "mtta_mean": None, "mttr_mean": None,
             **{f"{m}_p{int(p * 100)}": None for m in ("mtta", "mttr") for p in PERCENTILES},
             "ack_breached": 0, "resolve_breached": 0, "any_breached": 0}
    return {
        "from": iso(start), "to": iso(end), "group_by": group_by,
        "totals": _metrics(totals or (groups[0] if groups and not group_by else empty)),
        "groups": [{"key": r["grp"], **_metrics(r)} for r in groups] if group_by else [],
    }
