"""Stage-by-stage profile of one pipeline batch (issue 11). Run:
`flock /tmp/im-bench.lock .venv/bin/python -m bench.pipeline_profile [--events 1000] [--per-incident 1]`.

In this process, on a fresh database: ingest a warm-up batch (it fills the correlation window and
loads the classifier), then a measured batch of --events events (--per-incident 1: each opens its
own incident), and run the stages one after the other as `pipeline.batch` does (the batch handed
on as it is). Per stage: wall time, this process's CPU, the time spent inside database calls and
their number, and the statements that took longest. Each batch's ingest is timed apart (wall and
CPU; its database work goes through the autocommit pool, so it is wall minus CPU). `--prefill N`
first copies the warm-up's incidents to N older rows (a table the size a storm leaves), `--sql`
runs statements before the measured batches (an experiment: drop an index, set a fillfactor).
`--hops` adds, after each stage, the JSON round trip a task per stage (PIPELINE_STAGE_TASKS=true)
pays for the batch in its arguments, and prints its CPU apart. Database time is measured around
each cursor execute (Postgres's work plus the round trip); pg_stat_statements is not loaded on the
shared server.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from collections import defaultdict
from typing import Any, Callable

from bench.common import make_environment
from bench.pipeline import factory


class SqlClock:
    """Time inside cursor executes, per statement text, while `active`."""

    def __init__(self) -> None:
        self.active = False
        self.by_statement: dict[str, list[float]] = defaultdict(list)
        self._started: list[float] = []

    def install(self, engine: Any) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "before_cursor_execute")
        def before(*_args: Any) -> None:
            self._started.append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            elapsed = time.perf_counter() - self._started.pop()
            if self.active:
                self.by_statement[" ".join(statement.split())[:110]].append(elapsed)

    def take(self) -> dict[str, list[float]]:
        taken, self.by_statement = dict(self.by_statement), defaultdict(list)
        return taken


def events(tag: str, count: int, per_incident: int) -> list[Any]:
    """The events bench/pipeline.py sends, validated as the REST door does."""
    from api.schemas import load_event, to_new_event

    body = json.loads(factory(tag, count, per_incident)(0, 0))
    return [to_new_event(load_event(event), event) for event in body["events"]]


def ingest(tag: str, count: int, per_incident: int) -> list[int]:
    from app.services.ingest import ingest_events

    outbox: list[int] = []
    for start in range(0, count, 1000):
        chunk = events(f"{tag}{start}", min(1000, count - start), per_incident)
        ingest_events(chunk, dispatcher=lambda ids: outbox.extend(ids))
    return outbox


def hop(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the next task receives it (Celery's json serializer, both ways)."""
    return json.loads(json.dumps(batch))  # type: ignore[no-any-return]


def run_stages(outbox_ids: list[int], clock: SqlClock, report: bool, functions: int = 0,
               hops: bool = False) -> dict[str, Any]:
    from app.services import pipeline

    stages: list[tuple[str, Callable[[Any], Any]]] = [
        ("dedup", pipeline.deduplicate), ("classify", pipeline.classify), ("enrich", pipeline.enrich),
        ("correlate", pipeline.correlate), ("route", pipeline.route_and_persist)]
    value: Any = outbox_ids
    totals = {"wall": 0.0, "cpu": 0.0, "sql": 0.0, "statements": 0, "hop_cpu": 0.0}
    rows = []
    for name, stage in stages:
        profiler = cProfile.Profile() if functions else None
        clock.active = True
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        value = stage(value)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        hop_cpu = 0.0
        if hops and isinstance(value, dict):  # the hop to the next task: the batch travels as JSON
            hop_cpu = time.process_time()
            value = hop(value)
            hop_cpu = time.process_time() - hop_cpu
        totals["hop_cpu"] += hop_cpu
        clock.active = False
        if profiler:
            print(f"== {name}: functions by cumulative time", flush=True)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(functions)
        statements = clock.take()
        sql = sum(sum(v) for v in statements.values())
        count = sum(len(v) for v in statements.values())
        totals["wall"] += wall
        totals["cpu"] += cpu
        totals["sql"] += sql
        totals["statements"] += count
        rows.append((name, wall, cpu, sql, count, statements, hop_cpu))
    if report:
        for name, wall, cpu, sql, count, statements, hop_cpu in rows:
            print(f"{name:10s} wall {wall * 1000:7.1f} ms  cpu {cpu * 1000:7.1f} ms  "
                  f"db {sql * 1000:7.1f} ms in {count:4d} statements"
                  + (f"  (+ JSON hop cpu {hop_cpu * 1000:.1f} ms)" if hops else ""), flush=True)
            for text, times in sorted(statements.items(), key=lambda kv: -sum(kv[1]))[:4]:
                print(f"    {sum(times) * 1000:7.1f} ms x{len(times):<4d} {text}", flush=True)
        print(f"{'total':10s} wall {totals['wall'] * 1000:7.1f} ms  cpu {totals['cpu'] * 1000:7.1f} ms  "
              f"db {totals['sql'] * 1000:7.1f} ms in {totals['statements']} statements"
              + (f"  (+ JSON hops cpu {totals['hop_cpu'] * 1000:.1f} ms)" if hops else ""), flush=True)
    return totals


def run_sql(statement: str) -> None:
    from sqlalchemy import text

    from app.adapters.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text(statement))
    print(f"ran: {' '.join(statement.split())[:160]}", flush=True)


def prefill(count: int) -> None:
    """`count` processed incidents (and one event each) older than the correlation window, copied
    from the warm-up's rows with their own ids and fingerprints, then ANALYZE."""
    run_sql(f"""
        WITH template AS MATERIALIZED (
            SELECT row_number() OVER (ORDER BY id) - 1 AS k, to_jsonb(i) AS doc
            FROM incidents AS i WHERE processed_at IS NOT NULL),
        n AS (SELECT count(*) AS rows FROM template)
        INSERT INTO incidents SELECT (jsonb_populate_record(NULL::incidents, t.doc || jsonb_build_object(
            'id', 'PRE-' || g, 'fingerprint', md5('pre' || g), 'status', 'RESOLVED',
            'created_at', now() - interval '2 days' - g * interval '1 second'))).*
        FROM generate_series(1, {count}) AS g CROSS JOIN n JOIN template AS t ON t.k = g % n.rows""")
    run_sql("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--per-incident", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="measured batches (after one warm-up)")
    parser.add_argument("--hops", action="store_true", help="time the JSON hop a task per stage pays, apart")
    parser.add_argument("--functions", type=int, default=0, help="cProfile: top N functions per stage (last round)")
    parser.add_argument("--prefill", type=int, default=0,
                        help="first copy the warm-up's processed incidents to this many older rows (a table the "
                             "size a storm leaves; older than the correlation window)")
    parser.add_argument("--sql", action="append", default=[],
                        help="a statement to run before the measured batches (an experiment: drop an index, ...)")
    args = parser.parse_args()
    environment = make_environment()
    os.environ.update(environment.env)
    try:
        from app.adapters.db import get_engine

        clock = SqlClock()
        clock.install(get_engine())
        print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
        run_stages(ingest("warm", args.events, args.per_incident), clock, report=False, hops=args.hops)
        if args.prefill:
            prefill(args.prefill)
        for statement in args.sql:
            run_sql(statement)
        for round_no in range(args.rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            outbox = ingest(f"r{round_no}-", args.events, args.per_incident)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"ingest     wall {wall * 1000:7.1f} ms  cpu {cpu * 1000:7.1f} ms  (the batch's own ingest, "
                  "not part of the stages below)", flush=True)
            print(f"-- batch {round_no + 1}: {args.events} events, {args.events // args.per_incident} incidents",
                  flush=True)
            totals = run_stages(outbox, clock, report=True,
                                functions=args.functions if round_no == args.rounds - 1 else 0, hops=args.hops)
            print(f"   per event: cpu {totals['cpu'] / args.events * 1e6:.0f} us, "
                  f"db {totals['sql'] / args.events * 1e6:.0f} us", flush=True)
        print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    finally:
        from app.adapters.db import reset_engine

        reset_engine()
        environment.close()


if __name__ == "__main__":
    main()
