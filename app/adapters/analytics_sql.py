"""Incident analytics in SQL, one statement shape per dialect (the service, app/services/analytics.py,
holds no dialect branch; the same pattern as app/adapters/bulk.py).

`metric_rows(session, group_by, start, end)` answers one row per group (`is_total` 0) and one
totals row (`is_total` 1), each with `grp, total, acknowledged, resolved, mtta_mean, mttr_mean,
mtta_p50, mtta_p90, mttr_p50, mttr_p90, ack_breached, resolve_breached, any_breached`; durations
in seconds. Percentiles interpolate linearly (the value at rank p*(n-1), between its neighbours).

Postgres: one statement, `percentile_cont` per group and `GROUPING SETS` for the totals. The range
is read first (`OFFSET 0` keeps the planner from pulling the grouping key's order out of a
single-column index, which walked the whole heap in index order: `ix_incidents_severity`), so it
comes from `ix_incidents_analytics` (created_at INCLUDE the columns read, an index-only scan) or a
sequential scan, whichever the range calls for; without JIT compilation (its set-up cost more than
it saved on this query). docs/escalation.md has the measurements.
SQLite (the embedded default) has no `percentile_cont`: the same interpolation is computed with
ROW_NUMBER() / COUNT() windows; the totals are a second statement."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.domain.incident import TERMINAL_STATUSES, status_in_sql

PERCENTILES = (0.5, 0.9)
_TERMINAL = status_in_sql(TERMINAL_STATUSES)
# Per transaction. A larger work_mem (in-memory sorts instead of spilled ones) made no measurable
# difference at the loads measured and costs up to ~300 MB per call: not set (docs/escalation.md).
_PG_SETTINGS = ("SET LOCAL jit = off",)
_RANGE = "created_at >= :start AND created_at < :end AND merged_into IS NULL"
# What the statement reads: the columns of `ix_incidents_analytics` (an index-only scan can serve them)
_COLUMNS = ("created_at, severity, category, team, source, status, acknowledged_at, resolved_at,"
            " sla_acknowledge_breached, sla_resolve_breached")


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
        f" FROM (SELECT {_COLUMNS} FROM incidents WHERE {_RANGE} OFFSET 0) AS i {grouping}"
    )


def _sqlite_sql(group_by: str | None) -> str:
    key = group_by or "NULL"
    ack = "(julianday(acknowledged_at) - julianday(created_at)) * 86400.0"
    res = f"CASE WHEN {_TERMINAL} THEN (julianday(resolved_at) - julianday(created_at)) * 86400.0 END"
    where = _RANGE
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


def metric_rows(session: Session, group_by: str | None, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The rows of the incidents created in [start, end), not merged, grouped by the column
    `group_by` (already checked by the caller) or not at all (then the totals row only)."""
    if session.get_bind().dialect.name == "postgresql":
        for statement in _PG_SETTINGS:
            session.execute(text(statement))
        return [_spread(dict(r._mapping)) for r in session.execute(text(_pg_sql(group_by)),
                                                                  {"start": start, "end": end})]
    # SQLite stores naive UTC text
    params = {k: v.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
              for k, v in (("start", start), ("end", end))}
    rows = [dict(r._mapping) for r in session.execute(text(_sqlite_sql(group_by)), params)]
    if group_by:
        rows += [{**dict(r._mapping), "is_total": 1} for r in session.execute(text(_sqlite_sql(None)), params)]
    else:
        rows = [{**row, "is_total": 1} for row in rows]
    return rows
