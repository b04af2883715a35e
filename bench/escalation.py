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
        spread_at = conn.execute(text("SELECT now()")).scalar()  # the due times end here
    load = _uptime()
    with engine.connect() as conn:
        # the bench's own set-up between spreading the due times and the sweep (beat has none)
        setup = float(conn.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp() - :t)"),
                                   {"t": spread_at}).scalar())
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
            # what a beat-driven sweep would show: the due times spread over one interval before it
            "bench_setup_before_sweep_secs": round(setup, 3),
            "page_lag_without_setup_secs": {"p50": round(statistics.median(lag) - setup, 3),
                                            "max": round(max(lag) - setup, 3)},
            "loadavg_before": load, "loadavg_after": _uptime()}


def _timed(run: Any, times: int = 5) -> tuple[float, float, Any]:
    runs, out = [], None
    for _ in range(times):
        started = time.perf_counter()
        out = run()
        runs.append(time.perf_counter() - started)
    return round(statistics.median(runs), 3), round(max(runs), 3), out


def _worst_error(estimated: dict[str, Any], exact: dict[str, Any]) -> float:
    """The largest relative error of an estimated p50/p90 against the exact one, over all groups."""
    pairs = [(estimated["totals"], exact["totals"])]
    exact_groups = {g["key"]: g for g in exact["groups"]}
    pairs += [(g, exact_groups[g["key"]]) for g in estimated["groups"]]
    worst = 0.0
    for got, want in pairs:
        assert got["count"] == want["count"] and got["sla"] == want["sla"]
        for metric in ("mtta_secs", "mttr_secs"):
            for stat in ("p50", "p90"):
                if want[metric][stat]:
                    worst = max(worst, abs(got[metric][stat] / want[metric][stat] - 1))
    return worst


def analytics_bench(engine: Any, count: int) -> dict[str, Any]:
    from app.adapters.analytics_sql import _exact_rows
    from app.adapters.db import read_session
    from app.services import analytics

    with engine.begin() as conn:
        conn.execute(text("TRUNCATE incidents, incident_timeline, notification_deliveries, incident_escalations,"
                          " analytics_daily, analytics_days, analytics_dirty"))
    load_secs = _load(engine, count, 0, False, 30 * 86400)
    end = datetime.now(timezone.utc) + timedelta(seconds=1)
    start = end - timedelta(days=31)
    with engine.connect() as conn:
        conn.execute(text("ANALYZE incidents"))
        baseline, _, _ = _timed(lambda: conn.execute(text(
            "SELECT count(*) FROM incidents WHERE created_at >= :s AND created_at < :e"),
            {"s": start, "e": end}).scalar())
    load = _uptime()
    # Exact, straight from the incidents (what every range costs without the rollup): same run.
    exact: dict[str, Any] = {}
    for key in ("severity", None):
        def run_exact(key: str | None = key) -> Any:
            with read_session() as session:
                return _exact_rows(session, key, start, end)
        median, worst, _ = _timed(run_exact, 3)
        exact[str(key)] = {"median_secs": median, "max_secs": worst}
    # The rollup: beat's job over the 30 closed days (the first run after an import: every day)
    started = time.perf_counter()
    rolled = analytics.rollup(limit=62)
    rollup_secs = time.perf_counter() - started
    figures: dict[str, Any] = {}
    for key in ("severity", None, "team", "source", "category"):
        median, worst, out = _timed(lambda key=key: analytics.incident_metrics(start, end, key))
        figures[str(key)] = {"median_secs": median, "max_secs": worst, "count": out["totals"]["count"],
                             "percentiles": out["percentiles"]}
    # accuracy: the same grouping computed exactly (the rollup off for this call)
    with read_session() as session:
        from app.adapters import analytics_sql

        exact_rows = analytics_sql.metric_rows(session, "severity", start, end, None)
    estimated = analytics.incident_metrics(start, end, "severity")
    exact_answer = analytics._answer(start, end, "severity", exact_rows)
    error = _worst_error(estimated, exact_answer)
    # one rolled-up day changed (an old incident acknowledged): that day is read from the incidents
    with engine.begin() as conn:
        conn.execute(text("UPDATE incidents SET acknowledged_at = created_at + interval '5 minutes', status ="
                          " 'ACKNOWLEDGED' WHERE id = (SELECT id FROM incidents WHERE status = 'NEW' AND created_at"
                          " < :old ORDER BY created_at LIMIT 1)"), {"old": end - timedelta(days=10)})
    dirty_median, dirty_max, _ = _timed(lambda: analytics.incident_metrics(start, end, "severity"))
    ratio = figures["severity"]["median_secs"] / exact["severity"]["median_secs"]
    return {"incidents": count, "load_secs": round(load_secs, 1),
            "rollup": {**rolled, "wall_secs": round(rollup_secs, 2)},
            "by_group": figures, "exact_from_incidents": exact, "ratio_severity_rollup_vs_exact": round(ratio, 3),
            "worst_percentile_error_severity": round(error, 4),
            "one_dirty_day_severity": {"median_secs": dirty_median, "max_secs": dirty_max},
            "baseline_count_secs": baseline, "loadavg_before": load, "loadavg_after": _uptime()}


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
