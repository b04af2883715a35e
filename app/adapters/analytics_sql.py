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
ROW_NUMBER() / COUNT() windows; the totals are a second statement.

Rollup (Postgres, migration 0009): closed UTC days are summed once per group into `analytics_daily`
(counts, duration sums, and sparse log-bucket histograms of the durations); `rollup_day` computes
one. `metric_rows` reads a range from the rollup where that covers more than `exact_max` incidents,
and from `incidents` for the rest (the partial first and last days, today, days not rolled up yet,
and days whose incidents changed since: the triggers of migration 0009 mark them in
`analytics_dirty`). Counts, means and SLA figures stay exact; percentiles then come from the merged
histograms, within half a bucket (±2.5 %) of the exact value. docs/escalation.md "Analytics"."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

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


def _exact_rows(session: Session, group_by: str | None, start: datetime, end: datetime) -> list[dict[str, Any]]:
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


# --- rollup (Postgres) ----------------------------------------------------------------------------
# Durations are counted in log-spaced buckets: 0 holds everything under UNIT, bucket b >= 1 holds
# [UNIT * RATIO**(b-1), UNIT * RATIO**b). A bucket stands for its geometric middle, so an estimate
# is within a factor sqrt(RATIO) (±2.5 %) of any value in the bucket. 1 ms to a year is ~510 buckets;
# a day of one group fills the few dozen its durations fall into (the arrays are sparse).
BUCKET_UNIT = 0.001
BUCKET_RATIO = 1.05
DIMENSIONS = ("severity", "category", "team", "source")
_LN_RATIO = math.log(BUCKET_RATIO)
_ACK = "date_part('epoch', acknowledged_at - created_at)"
_RES = f"CASE WHEN {_TERMINAL} THEN date_part('epoch', resolved_at - created_at) END"
_STAT_FIELDS = ("total", "acknowledged", "resolved", "tta_sum", "ttr_sum", "ack_breached", "resolve_breached",
                "any_breached")


def _bucket_sql(value: str) -> str:
    return (f"CASE WHEN {value} < {BUCKET_UNIT} THEN 0"
            f" ELSE 1 + floor(ln({value} / {BUCKET_UNIT}) / ln({BUCKET_RATIO}))::int END")


def bucket_of(seconds: float) -> int:
    """The bucket of a duration, as the SQL above computes it (tests compare the two)."""
    return 0 if seconds < BUCKET_UNIT else 1 + math.floor(math.log(seconds / BUCKET_UNIT) / _LN_RATIO)


def bucket_value(bucket: int) -> float:
    return 0.0 if bucket <= 0 else BUCKET_UNIT * BUCKET_RATIO ** (bucket - 0.5)


def _unpivoted_sql(dims: Iterable[str], where: str) -> str:
    """Per (dim, key): the figures (`kind` 's') and the histogram counts (`kind` 'h', one row per
    metric and bucket) of the incidents matching `where`. dim '' is every incident (key NULL)."""
    values = ", ".join("('', NULL::text)" if d == "" else f"('{d}', i.{d}::text)" for d in dims)
    return (
        f"WITH i AS (SELECT {', '.join(DIMENSIONS)}, acknowledged_at IS NOT NULL AS acked, {_TERMINAL} AS done,"
        f" {_ACK} AS tta, {_RES} AS ttr, sla_acknowledge_breached AS ab, sla_resolve_breached AS rb"
        f" FROM incidents WHERE ({where}) AND merged_into IS NULL),"
        f" u AS MATERIALIZED (SELECT d.dim, d.key, i.acked, i.done, i.tta, i.ttr, i.ab, i.rb"
        f" FROM i CROSS JOIN LATERAL (VALUES {values}) AS d(dim, key))"
        f" SELECT 's' AS kind, dim, key, NULL::text AS m, NULL::int AS b, count(*) AS total,"
        f" count(*) FILTER (WHERE acked) AS acknowledged, count(*) FILTER (WHERE done) AS resolved,"
        f" coalesce(sum(tta), 0) AS tta_sum, coalesce(sum(ttr), 0) AS ttr_sum,"
        f" count(*) FILTER (WHERE ab) AS ack_breached, count(*) FILTER (WHERE rb) AS resolve_breached,"
        f" count(*) FILTER (WHERE ab OR rb) AS any_breached FROM u GROUP BY dim, key"
        f" UNION ALL SELECT 'h', dim, key, x.m, x.b, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL"
        f" FROM u CROSS JOIN LATERAL (VALUES ('tta', {_bucket_sql('u.tta')}), ('ttr', {_bucket_sql('u.ttr')}))"
        f" AS x(m, b) WHERE x.b IS NOT NULL GROUP BY dim, key, x.m, x.b"
    )


@dataclass
class _Figures:
    """One group's figures: exact sums and counts, and a histogram per duration metric."""

    stats: dict[str, float]
    hist: dict[str, dict[int, int]]

    @classmethod
    def empty(cls) -> "_Figures":
        return cls({f: 0 for f in _STAT_FIELDS}, {"tta": defaultdict(int), "ttr": defaultdict(int)})


def _collect(rows: Iterable[Any], into: dict[tuple[str, str | None], _Figures]) -> None:
    for r in rows:
        figures = into.setdefault((r.dim, r.key), _Figures.empty())
        if r.kind == "s":
            for f in _STAT_FIELDS:
                value = getattr(r, f) or 0
                figures.stats[f] += float(value) if f.endswith("_sum") else int(value)
        else:
            figures.hist[r.m][r.b] += int(r.total)


def _percentile(hist: dict[int, int], n: int, p: float) -> float | None:
    """The value at rank p*(n-1), linearly between its neighbours (as percentile_cont), each rank's
    value being its bucket's middle."""
    if not n:
        return None
    buckets = sorted(hist.items())

    def at(index: int) -> float:
        seen = 0
        for bucket, count in buckets:
            seen += count
            if index < seen:
                return bucket_value(bucket)
        return bucket_value(buckets[-1][0])

    rank = p * (n - 1)
    low = math.floor(rank)
    value = at(low)
    return value if rank == low else value + (rank - low) * (at(low + 1) - value)


def _row(figures: _Figures, grp: str | None, is_total: int) -> dict[str, Any]:
    s = figures.stats
    row: dict[str, Any] = {"grp": grp, "is_total": is_total, "percentiles": "estimated",
                           **{f: int(s[f]) for f in ("total", "acknowledged", "resolved", "ack_breached",
                                                     "resolve_breached", "any_breached")}}
    for name, metric, total in (("mtta", "tta", "tta_sum"), ("mttr", "ttr", "ttr_sum")):
        hist = figures.hist[metric]
        n = sum(hist.values())
        row[f"{name}_mean"] = s[total] / n if n else None
        for p in PERCENTILES:
            row[f"{name}_p{int(p * 100)}"] = _percentile(hist, n, p)
    return row


def _utc_day(moment: datetime) -> date:
    return moment.astimezone(timezone.utc).date()


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def rollup_supported(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def metric_rows(session: Session, group_by: str | None, start: datetime, end: datetime,
                exact_max: int | None = None) -> list[dict[str, Any]]:
    """The rows of the incidents created in [start, end), not merged, grouped by the column
    `group_by` (already checked by the caller) or not at all (then the totals row only). Each row
    says whether its percentiles are `exact` or `estimated` (from the rollup's histograms: only when
    the rolled-up days of the range hold more than `exact_max` incidents)."""
    first, last = _utc_day(start), _utc_day(end)
    first_full = first if _day_start(first) == start.astimezone(timezone.utc) else first + timedelta(days=1)
    rolled: list[tuple[date, int]] = []
    if exact_max is not None and rollup_supported(session) and first_full < last:
        if not session.in_transaction():
            # every statement below reads one snapshot: a day marked dirty in between cannot be
            # read from the rollup by one statement and be left out of the raw range by another
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        rolled = [(r[0], r[1]) for r in session.execute(text(
            "SELECT day, incidents FROM analytics_days a WHERE day >= :first AND day < :last"
            " AND NOT EXISTS (SELECT 1 FROM analytics_dirty d WHERE d.day = a.day) ORDER BY day"),
            {"first": first_full, "last": last})]
    if not rolled or sum(n for _, n in rolled) <= (exact_max or 0):
        return [{**row, "percentiles": "exact"} for row in _exact_rows(session, group_by, start, end)]
    for statement in _PG_SETTINGS:
        session.execute(text(statement))
    dims = ["", group_by] if group_by else [""]
    figures: dict[tuple[str, str | None], _Figures] = {}
    days = [d for d, _ in rolled]
    _collect(session.execute(text(
        "SELECT 's' AS kind, dim, key, NULL AS m, NULL AS b, " + ", ".join(f"sum({f}) AS {f}" for f in _STAT_FIELDS)
        + " FROM analytics_daily WHERE dim = ANY(:dims) AND day = ANY(:days) GROUP BY dim, key"
        " UNION ALL SELECT 'h', dim, key, 'tta', u.b, sum(u.c), " + ", ".join(["NULL"] * 7)
        + " FROM analytics_daily, unnest(tta_b, tta_c) AS u(b, c) WHERE dim = ANY(:dims) AND day = ANY(:days)"
        " GROUP BY dim, key, u.b"
        " UNION ALL SELECT 'h', dim, key, 'ttr', u.b, sum(u.c), " + ", ".join(["NULL"] * 7)
        + " FROM analytics_daily, unnest(ttr_b, ttr_c) AS u(b, c) WHERE dim = ANY(:dims) AND day = ANY(:days)"
        " GROUP BY dim, key, u.b"), {"dims": dims, "days": days}), figures)
    # what the rollup does not hold: the range minus the rolled-up days, as intervals
    intervals: list[tuple[datetime, datetime]] = []
    cursor = start
    for day in days:
        if _day_start(day) > cursor:
            intervals.append((cursor, _day_start(day)))
        cursor = _day_start(day + timedelta(days=1))
    if cursor < end:
        intervals.append((cursor, end))
    if intervals:
        params: dict[str, Any] = {}
        where = []
        for n, (a, b) in enumerate(intervals):
            params[f"a{n}"], params[f"b{n}"] = a, b
            where.append(f"(created_at >= :a{n} AND created_at < :b{n})")
        _collect(session.execute(text(_unpivoted_sql(dims, " OR ".join(where))), params), figures)
    rows = [_row(figures.get(("", None)) or _Figures.empty(), None, 1)]
    if group_by:
        rows += [_row(f, key, 0) for (dim, key), f in figures.items() if dim == group_by]
    return rows


def rollup_day(session: Session, day: date) -> int:
    """(Re)compute one closed UTC day's rollup in the caller's transaction; returns its incidents.
    Marks of the day are read first and only those are removed at the end: a change committed after
    the read keeps its mark, so the day is read from `incidents` and rolled up again next time."""
    session.execute(text(
        "INSERT INTO analytics_days (day, incidents, computed_at) VALUES (:day, 0, now())"
        " ON CONFLICT (day) DO UPDATE SET computed_at = now()"), {"day": day})  # one job per day at a time
    marks = [r[0] for r in session.execute(text("SELECT id FROM analytics_dirty WHERE day = :day"), {"day": day})]
    for statement in _PG_SETTINGS:
        session.execute(text(statement))
    figures: dict[tuple[str, str | None], _Figures] = {}
    _collect(session.execute(text(_unpivoted_sql(("",) + DIMENSIONS, "created_at >= :a AND created_at < :b")),
                             {"a": _day_start(day), "b": _day_start(day + timedelta(days=1))}), figures)
    session.execute(text("DELETE FROM analytics_daily WHERE day = :day"), {"day": day})
    if figures:
        session.execute(text(
            "INSERT INTO analytics_daily (day, dim, key, " + ", ".join(_STAT_FIELDS)
            + ", tta_b, tta_c, ttr_b, ttr_c) VALUES (:day, :dim, :key, " + ", ".join(f":{f}" for f in _STAT_FIELDS)
            + ", :tta_b, :tta_c, :ttr_b, :ttr_c)"),
            [{"day": day, "dim": dim, "key": key, **f.stats,
              **{f"{m}_{part}": [b if part == "b" else f.hist[m][b] for b in sorted(f.hist[m])]
                 for m in ("tta", "ttr") for part in ("b", "c")}}
             for (dim, key), f in figures.items()])
    total = int(figures[("", None)].stats["total"]) if ("", None) in figures else 0
    session.execute(text("UPDATE analytics_days SET incidents = :n WHERE day = :day"), {"n": total, "day": day})
    if marks:
        session.execute(text("DELETE FROM analytics_dirty WHERE id = ANY(:ids)"), {"ids": marks})
    return total


def _pending(session: Session, now: datetime, settle: timedelta) -> tuple[date | None, date, date]:
    """(the newest day rolled up, the first day not rolled up yet, the last settled closed day).
    With nothing rolled up yet the first is the first incident's day (or the day after the last
    settled one: nothing to do)."""
    last_settled = _utc_day(now - settle) - timedelta(days=1)
    newest = session.execute(text("SELECT max(day) FROM analytics_days")).scalar()
    if newest is not None:
        return newest, newest + timedelta(days=1), last_settled
    oldest = session.execute(text("SELECT min(created_at) FROM incidents")).scalar()
    return None, _utc_day(oldest) if oldest is not None else last_settled + timedelta(days=1), last_settled


def rollup_due_days(session: Session, now: datetime, settle: timedelta, limit: int) -> list[date]:
    """Closed days (ended at least `settle` ago) never rolled up, oldest first from the last one
    rolled up (or the first incident's day), and rolled-up days marked dirty; at most `limit`."""
    _, begin, last_settled = _pending(session, now, settle)
    dirty = [r[0] for r in session.execute(text(
        "SELECT DISTINCT day FROM analytics_dirty WHERE day <= :last ORDER BY day LIMIT :limit"),
        {"last": last_settled, "limit": limit})]
    missing = [begin + timedelta(days=n) for n in range(min(limit, max(0, (last_settled - begin).days + 1)))]
    return sorted(set(dirty) | set(missing))[:limit]


def rollup_lag(session: Session, now: datetime, settle: timedelta) -> tuple[date | None, int]:
    """(the newest day rolled up, how many settled closed days wait to be rolled up)."""
    newest, begin, last_settled = _pending(session, now, settle)
    return newest, max(0, (last_settled - begin).days + 1)


def dirty_days(session: Session) -> int:
    return int(session.execute(text("SELECT count(DISTINCT day) FROM analytics_dirty")).scalar() or 0)
