"""Benchmark of the escalation sweep and of incident analytics (a throwaway Postgres database).

1. Sweep: 100,000 open incidents, 10,000 of them due (due times spread over the sweep interval
   before the run, as a periodic sweep finds them), one policy level targeting an on-call schedule
   and a user on two channels. One `escalation.sweep()` (the beat task's body), timed; then the lag
   of each page after its due time. Baseline in the same run: one bare UPDATE that moves the due
   time of the same 10,000 rows (the least any sweep must write).
2. Analytics: 1,000,000 incidents over 30 days; `incident_metrics` grouped by severity (and the
   other keys) over the whole range, median of 5 runs; baseline: `SELECT count(*)` over the range.

    flock /tmp/im-bench.lock .venv/bin/python -m bench.escalation [--open 100000] [--due 10000]
        [--analytics 1000000]          (--open 0: analytics only)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import text

from bench.common import make_environment

INSERT_INCIDENTS = """
INSERT INTO incidents (id, title, description, source, severity, status, fingerprint, event_count, first_seen,
  last_seen, created_at, updated_at, tags, sla_acknowledge_breached, sla_resolve_breached, escalation_level,
  escalation_policy, next_escalation_at, category, team, acknowledged_at, resolved_at)
SELECT 'INC-20270101-' || lpad(g::text, 7, '0'), 'incident ' || g, '', (ARRAY['sentinel','shield','edge'])[1 + g % 3],
  'P' || (g % 5), s.status, md5(g::text), 1, c.created, c.created, c.created, c.created, '{}'::jsonb,
  g % 7 = 0, g % 11 = 0, 0, :policy,
  CASE WHEN g <= :due THEN :now - make_interval(secs => (g % 5000) / 1000.0)
       WHEN g % 2 = 0 THEN :now + interval '1 hour' END,
  (ARRAY['performance','security','availability', NULL])[1 + g % 4], (ARRAY['ml','platform','data'])[1 + g % 3],
  CASE WHEN s.status <> 'NEW' THEN c.created + make_interval(secs => 5 + (g::bigint * 7919) % 900) END,
  CASE WHEN s.status IN ('RESOLVED','CLOSED')
       THEN c.created + make_interval(secs => 900 + (g::bigint * 104729) % 20000) END
FROM generate_series(1, :count) AS g,
  LATERAL (SELECT CASE WHEN :open_only OR g <= :due THEN 'NEW'
                       ELSE (ARRAY['NEW','ACKNOWLEDGED','RESOLVED','CLOSED'])[1 + g % 4] END AS status) AS s,
  LATERAL (SELECT :start + make_interval(secs => (g::float8 / :count) * :span) AS created) AS c
"""


def _load(engine: Any, count: int, due: int, open_only: bool, span_secs: float) -> float:
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(INSERT_INCIDENTS), {"policy": "bench", "due": due, "now": now, "count": count,
                                              "open_only": open_only, "start": now - timedelta(seconds=span_secs),
                                              "span": span_secs})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE incidents"))  # index-only scans need the visibility map
    return time.perf_counter() - started


def _uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def sweep_bench(engine: Any, open_count: int, due: int) -> dict[str, Any]:
    from app.services import escalation
    from app.services import escalation_config as config

    for user in ("alice", "bob"):
        config.create_object(config.USER, config.load(config.USER, {"name": user}))
    config.create_object(config.SCHEDULE, config.load(config.SCHEDULE, {
        "name": "primary", "time_zone": "Europe/Berlin", "layers": [
            {"participants": ["alice", "bob"], "rotation_unit": "days", "handoff_time": "09:00",
             "start": "2026-01-05"}]}))
    config.create_object(config.POLICY, config.load(config.POLICY, {"name": "bench", "levels": [
        {"targets": [{"type": "schedule", "id": "primary"}, {"type": "user", "id": "bob"}],
         "channels": ["email", "slack"], "escalate_after_secs": 300}]}))
    load_secs = _load(engine, open_count, due, True, 3600)
    # baseline: the bare write of the due rows (then put back)
    with engine.begin() as conn:
        started = time.perf_counter()
        conn.execute(text("UPDATE incidents SET next_escalation_at = next_escalation_at + interval '1 hour',"
                          " escalation_level = 1 WHERE id IN (SELECT id FROM incidents"
                          " WHERE next_escalation_at <= now() ORDER BY id FOR UPDATE SKIP LOCKED)"))
        baseline = time.perf_counter() - started
        conn.rollback()
    with engine.begin() as conn:  # due over the last 5 s (one sweep interval); kept to measure each page's lag
        conn.execute(text("UPDATE incidents SET next_escalation_at = now() - make_interval(secs => random() * 5)"
                          " WHERE next_escalation_at <= now()"))
        conn.execute(text("CREATE TABLE bench_due AS SELECT id, next_escalation_at AS due FROM incidents"
                          " WHERE next_escalation_at <= now()"))
    load = _uptime()
    result = escalation.sweep()
    with engine.connect() as conn:
        lag = [float(r[0]) for r in conn.execute(text(
            "SELECT EXTRACT(EPOCH FROM t.at - d.due) FROM incident_timeline t JOIN bench_due d"
            " ON d.id = t.incident_id WHERE t.kind = 'escalated'"))]
        deliveries = conn.scalar(text("SELECT count(*) FROM notification_deliveries"))
    again = escalation.sweep()
    return {"open": open_count, "due": due, "load_secs": round(load_secs, 1), "sweep_secs": round(result.seconds, 3),
            "fired": result.fired, "deliveries": deliveries, "batches": result.batches,
            "baseline_bare_update_secs": round(baseline, 3), "ratio_vs_baseline": round(result.seconds / baseline, 2),
            "replay_fired": again.fired, "replay_secs": round(again.seconds, 3),
            "page_lag_after_due_secs": {"p50": round(statistics.median(lag), 3), "max": round(max(lag), 3)},
            "loadavg_before": load, "loadavg_after": _uptime()}


def analytics_bench(engine: Any, count: int) -> dict[str, Any]:
    from app.services.analytics import incident_metrics

    with engine.begin() as conn:
        conn.execute(text("TRUNCATE incidents, incident_timeline, notification_deliveries, incident_escalations"))
    load_secs = _load(engine, count, 0, False, 30 * 86400)
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    start = end - timedelta(days=31)
    with engine.connect() as conn:
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            conn.execute(text("SELECT count(*) FROM incidents WHERE created_at >= :s AND created_at < :e"),
                         {"s": start, "e": end}).scalar()
            timings.append(time.perf_counter() - started)
        baseline = statistics.median(timings)
        from app.adapters.analytics_sql import _PG_SETTINGS, _pg_sql

        for statement in _PG_SETTINGS:
            conn.execute(text(statement))
        plan = [r[0] for r in conn.execute(text("EXPLAIN " + _pg_sql("severity")), {"start": start, "end": end})]
    # The statement before it read the range first and sorted in memory (same run, same data): the
    # planner walked the heap in `ix_incidents_severity` order and spilled the sorts to disk.
    from app.adapters.analytics_sql import _COLUMNS, _RANGE

    before_sql = _pg_sql("severity").replace(f"FROM (SELECT {_COLUMNS} FROM incidents WHERE {_RANGE} OFFSET 0) AS i",
                                             f"FROM incidents WHERE {_RANGE}")
    before_runs = []
    with engine.connect() as conn:
        for _ in range(5):
            started = time.perf_counter()
            conn.execute(text(before_sql), {"start": start, "end": end}).all()
            before_runs.append(time.perf_counter() - started)
        before_plan = [r[0] for r in conn.execute(text("EXPLAIN " + before_sql), {"start": start, "end": end})]
    load = _uptime()
    figures: dict[str, Any] = {}
    for key in ("severity", None, "team", "source", "category"):
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            out = incident_metrics(start, end, key)
            runs.append(time.perf_counter() - started)
        figures[str(key)] = {"median_secs": round(statistics.median(runs), 3), "max_secs": round(max(runs), 3),
                             "count": out["totals"]["count"]}
    return {"incidents": count, "load_secs": round(load_secs, 1), "by_group": figures,
            "baseline_count_secs": round(baseline, 3),
            "ratio_severity_vs_count": round(figures["severity"]["median_secs"] / baseline, 2),
            "before_severity_median_secs": round(statistics.median(before_runs), 3),
            "ratio_severity_vs_before": round(figures["severity"]["median_secs"] / statistics.median(before_runs), 2),
            "plan_scan": [line.strip() for line in plan if "Scan" in line or "Sort" in line],
            "before_plan_scan": [line.strip() for line in before_plan if "Scan" in line or "Sort" in line],
            "loadavg_before": load, "loadavg_after": _uptime()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--open", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--analytics", type=int, default=1_000_000)
    args = parser.parse_args()
    environment = make_environment()
    try:
        os.environ.update(environment.env)
        from app.adapters.db import get_engine, reset_engine
        from app.config import reset_settings_cache

        reset_settings_cache()
        reset_engine()
        engine = get_engine()
        if args.open:  # --open 0: analytics only
            print(json.dumps({"sweep": sweep_bench(engine, args.open, args.due)}, indent=2), flush=True)
        if args.analytics:
            print(json.dumps({"analytics": analytics_bench(engine, args.analytics)}, indent=2), flush=True)
        reset_engine()
    finally:
        environment.close()


if __name__ == "__main__":
    main()
