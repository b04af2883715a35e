"""Pipeline benchmark (issue 4). Run: `flock /tmp/im-bench.lock .venv/bin/python -m bench.pipeline`.

gunicorn (2 workers, api.gunicorn_conf) + Celery workers (pipeline and ingest queues) on a fresh
Postgres database and Redis db; the load generator drives HTTP. Every event has its own title, so
every event opens its own incident: the heaviest pipeline work (dedup, classification, enrichment
with similar-incident search, correlation scoring, routing, one incident row write each).

(a) sustained: open-loop load at --rate events/s ({"events": [--batch]} per request) for
    --duration s; events whose incident row was processed inside the window / duration, and the
    backlog left when the load stops (a sustained rate leaves a bounded backlog);
(b) latency: 500 events/s (10 per request) for --latency-duration s; p50/p95/p99 of
    processed_at - received_at (accept -> incident processed) over those events;
(c) baseline, same run: one event per request, PIPELINE_BATCH_SIZE=1 and PIPELINE_STAGE_TASKS=true
    (a chain of five tasks per event: the "task per event" design docs/pipeline.md measured at ~135
    events/s), offered --baseline-rate so that it drains -> ratio (a) / (c);
(s) --compare-stage-tasks: phase (a) again with the workers restarted with PIPELINE_STAGE_TASKS=true
    (each stage its own task, the batch as JSON between them) -> the same-run ratio of one task per
    batch (the default) to a task per stage (issue 11);
(m) --memory-minutes N: --memory-rate events/s (10 per request) for N minutes, worker RSS sampled
    every 30 s (issue 11: RSS stays flat; the caches are bounded, docs/pipeline.md "Memory").
Worker RSS (main process + pool children) before and after. Phases (a) and (b) also report the
batches the drain cut (events per route write: count, mean, median, max), which tell whether the
drain let batches grow with the load; (b) also the five longest waits between two batches
finishing (`gaps`: a stall shows there, with when it happened). (a) reports the CPU per accepted
event of each kind of process (web, workers, the Postgres backends serving each, Postgres's own
background processes, Redis, the load generator) during the load and during the drain, and per
table the updates that were HOT and the heap's size. `--sql` runs statements on the fresh
database first (an experiment: a fillfactor, an index dropped); BENCH_KEEP_DB=1 keeps the
database, BENCH_LOG_LEVEL=INFO the workers' per-batch stage log. `end_to_end_per_s` of (a): every
accepted event processed, over the load's duration plus the time its backlog took to drain.
`uptime` is printed with every figure: the box is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import ROOT, Server, cpu_snapshot, cpu_split, make_environment, run_load

SENTINEL = json.loads((ROOT / "tests" / "fixtures" / "sentinel-event.json").read_text())
TITLES = ["Latency Spike Detected", "GPU memory exhausted", "Token usage over budget", "Prompt injection attempt",
          "Model drift detected", "Error rate above threshold", "Rate limit exceeded", "Toxicity score spike"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def factory(tag: str, size: int, per_incident: int = 1):  # type: ignore[no-untyped-def]
    """Events with their own ids; every `per_incident` consecutive events of a client share a title
    (one fingerprint: the later ones dedup into the first one's incident, across requests)."""

    def make(worker: int, n: int) -> bytes:
        events = []
        for i in range(size):
            event = dict(SENTINEL)
            event["event_id"] = f"{tag}-{worker}-{n}-{i}"
            group = (n * size + i) // per_incident
            event["title"] = f"{TITLES[group % len(TITLES)]} {tag}-{worker}-{group}"
            event["tags"] = {**SENTINEL["tags"], "service": f"svc-{group % 20}"}
            events.append(event)
        body: Any = {"events": events} if size > 1 else events[0]
        return json.dumps(body).encode()

    return make


class Workers:
    """A `celery worker` process group; RSS summed over the main process and its pool children."""

    def __init__(self, env: dict[str, str], concurrency: int, log: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.celery_app", "worker", "-Q", "pipeline,ingest",
             "--concurrency", str(concurrency), "-n", f"bench-{os.getpid()}-{time.time_ns()}@%h", "--loglevel",
             "WARNING", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, start_new_session=True, stdout=log.open("a"), stderr=subprocess.STDOUT)

    def pids(self) -> list[int]:
        found = [self.process.pid]
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().split()
                except OSError:
                    continue
                if int(stat[3]) == self.process.pid:
                    found.append(int(pid))
        return found

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _db(env: dict[str, str]) -> psycopg.Connection:
    return psycopg.connect(env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _counts(env: dict[str, str], prefix: str) -> tuple[int, int]:
    with _db(env) as conn:
        row = conn.execute("SELECT count(*), count(processed_at) FROM events WHERE event_id LIKE %s",
                           (f"{prefix}-%",)).fetchone()
    return int(row[0]), int(row[1])


def _wait_drained(env: dict[str, str], prefix: str, timeout: float) -> float:
    """Seconds until every event of `prefix` is processed; nan when none was for 60 s (a stall: the
    bench runs no beat, so no outbox relay re-sends lost work) or after `timeout`."""
    started = last_progress = time.monotonic()
    last_done = -1
    while time.monotonic() - started < timeout:
        total, done = _counts(env, prefix)
        if total == done:
            return time.monotonic() - started
        if done != last_done:
            last_done, last_progress = done, time.monotonic()
        elif time.monotonic() - last_progress > 60:
            print(f"STALLED: {total - done} of {total} '{prefix}' events unprocessed, none done for 60 s", flush=True)
            return float("nan")
        time.sleep(0.5)
    return float("nan")


def sustained(env: dict[str, str], port: int, headers: dict[str, str], rate: float, batch: int, duration: float,
              tag: str, per_incident: int) -> dict[str, Any]:
    with _db(env) as conn:
        t0 = conn.execute("SELECT now()").fetchone()[0]
    cpu_start = cpu_snapshot()
    load = run_load(port, "/api/v1/events", headers, factory(tag, batch, per_incident), duration=duration,
                    processes=1, threads=8, rate=rate / batch, count_items=True)
    with _db(env) as conn:
        t1 = conn.execute("SELECT now()").fetchone()[0]
        accepted, processed_in_window = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE processed_at <= %s) FROM events WHERE event_id LIKE %s",
            (t1, f"{tag}-%")).fetchone()
    cpu_loaded = cpu_snapshot()
    window = (t1 - t0).total_seconds()
    drain = _wait_drained(env, tag, 900)
    cpu_end = cpu_snapshot()
    with _db(env) as conn:
        batches = _batch_sizes(conn, tag)
        processed, span = conn.execute(
            "SELECT count(processed_at), extract(epoch FROM max(processed_at) - min(received_at)) FROM events "
            "WHERE event_id LIKE %s", (f"{tag}-%",)).fetchone()
        # updates that were HOT (no index entry written) and the heap's size, per table written most
        tables = {r[0]: {"updates": r[1], "hot": r[2], "heap_mb": round(r[3] / 2**20),
                         "indexes_mb": round(r[4] / 2**20)}
                  for r in conn.execute(
                      "SELECT relname, n_tup_upd, n_tup_hot_upd, pg_relation_size(relid), pg_indexes_size(relid) "
                      "FROM pg_stat_user_tables WHERE relname IN ('incidents', 'events', 'incident_timeline')")}
        incidents = conn.execute("SELECT count(*), count(processed_at), count(correlation_group_id), "
                                 "count(enrichment), sum(event_count) FROM incidents WHERE title LIKE %s",
                                 (f"% {tag}-%",)).fetchone()
    return {"offered_events_per_s": rate, "accepted": accepted, "accepted_per_s": accepted / window,
            "processed_per_s": processed_in_window / window, "backlog_at_end": accepted - processed_in_window,
            "drain_secs": drain, "end_to_end_per_s": accepted / (window + drain),
            # first accept -> last incident processed (holds when a stall left some unprocessed)
            "processed": processed, "processed_per_s_first_accept_to_last": processed / float(span or 1),
            "uptime": uptime(),
            "batches": batches, "http": load.summary(),
            # µs of CPU per accepted event by kind of process, the load window and the drain after it
            "cpu_us_per_event": {"during_load": cpu_split(cpu_start, cpu_loaded, accepted),
                                 "drain": cpu_split(cpu_loaded, cpu_end, accepted - processed_in_window),
                                 "whole": cpu_split(cpu_start, cpu_end, accepted)},
            "incidents": dict(zip(("rows", "processed", "grouped", "enriched", "events"), incidents, strict=True)),
            "tables": tables}


def latency(env: dict[str, str], port: int, headers: dict[str, str], rate: float, batch: int, duration: float,
            tag: str, per_incident: int) -> dict[str, Any]:
    load = run_load(port, "/api/v1/events", headers, factory(tag, batch, per_incident), duration=duration,
                    processes=1, threads=8, rate=rate / batch, count_items=True)
    _wait_drained(env, tag, 900)
    with _db(env) as conn:
        row = conn.execute(
            "SELECT count(*), "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)), "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)), "
            "max(extract(epoch FROM processed_at - received_at)) FROM events WHERE event_id LIKE %s",
            (f"{tag}-%",)).fetchone()
        batches = _batch_sizes(conn, tag)
        gaps = _gaps(conn, tag)
    return {"events": row[0], "uptime": uptime(), "p50_ms": round(float(row[1]) * 1000, 1),
            "p95_ms": round(float(row[2]) * 1000, 1),
            "p99_ms": round(float(row[3]) * 1000, 1), "max_ms": round(float(row[4]) * 1000, 1), "batches": batches,
            "gaps": gaps, "http": load.summary()}


def memory(env: dict[str, str], port: int, headers: dict[str, str], workers: "Workers", rate: float,
           minutes: float, per_incident: int) -> dict[str, Any]:
    """Worker RSS every 30 s while --memory-rate events/s flow for --memory-minutes."""
    samples: list[tuple[int, float]] = [(0, round(workers.rss_mb(), 1))]
    started = time.monotonic()
    stop = started + minutes * 60
    step = 0
    while time.monotonic() < stop:
        step += 1
        run_load(port, "/api/v1/events", headers, factory(f"mem{step}", 10, per_incident),
                 duration=min(30.0, stop - time.monotonic()), processes=1, threads=4, rate=rate / 10,
                 count_items=True)
        samples.append((round(time.monotonic() - started), round(workers.rss_mb(), 1)))
        print(f"memory: {samples[-1][0]} s, worker RSS {samples[-1][1]} MB ({uptime()})", flush=True)
    return {"rate": rate, "minutes": minutes, "rss_mb": samples, "uptime": uptime()}


def _batch_sizes(conn: psycopg.Connection, tag: str) -> dict[str, Any]:
    """How the drain cut the load into batches: the route stage stamps one batch's events with one
    processed_at, so events per distinct processed_at are the batch sizes."""
    row = conn.execute(
        "SELECT count(*), avg(n), percentile_cont(0.5) WITHIN GROUP (ORDER BY n), max(n) FROM "
        "(SELECT count(*) AS n FROM events WHERE event_id LIKE %s GROUP BY processed_at) AS b",
        (f"{tag}-%",)).fetchone()
    return {"count": row[0], "mean_events": round(float(row[1] or 0), 1), "p50_events": float(row[2] or 0),
            "max_events": row[3]}


def _gaps(conn: psycopg.Connection, tag: str) -> list[list[float]]:
    """The five longest waits between two batches finishing (seconds into the phase, wait in s): a
    stall shows as a wait far above the drain's ~0.1 s period, and says when it happened."""
    rows = conn.execute(
        "WITH b AS (SELECT DISTINCT processed_at AS at FROM events WHERE event_id LIKE %s), "
        "s AS (SELECT min(received_at) AS t0 FROM events WHERE event_id LIKE %s) "
        "SELECT extract(epoch FROM lag(at) OVER w - s.t0), extract(epoch FROM at - lag(at) OVER w) "
        "FROM b, s WINDOW w AS (ORDER BY at) ORDER BY 2 DESC NULLS LAST LIMIT 5",
        (f"{tag}-%", f"{tag}-%")).fetchall()
    return [[round(float(a), 2), round(float(g), 2)] for a, g in rows if g is not None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=2000.0, help="offered events/s for the sustained phase")
    parser.add_argument("--batch", type=int, default=100, help="events per HTTP request (sustained phase)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--events-per-incident", type=int, default=1,
                        help="1: every event opens an incident (worst case); 10: nine of ten dedup")
    parser.add_argument("--latency-rate", type=float, default=500.0)
    parser.add_argument("--latency-duration", type=float, default=30.0)
    parser.add_argument("--baseline-duration", type=float, default=10.0)
    parser.add_argument("--baseline-rate", type=float, default=10.0, help="events/s offered to the baseline")
    parser.add_argument("--memory-minutes", type=float, default=0.0, help="run phase (m) for this long")
    parser.add_argument("--memory-rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--compare-stage-tasks", action="store_true",
                        help="phase (s): phase (a) again with a task per stage (PIPELINE_STAGE_TASKS=true)")
    parser.add_argument("--stage-tasks", action="store_true", help="run phases (a), (b), (m) with a task per stage")
    parser.add_argument("--skip", choices=["sustained", "latency", "baseline"], action="append", default=[])
    parser.add_argument("--label", default="", help="printed with the results (e.g. the commit measured)")
    parser.add_argument("--sql", action="append", default=[],
                        help="a statement to run on the fresh database before the load (an experiment: drop an "
                             "index, change a storage parameter, ...)")
    args = parser.parse_args()

    environment = make_environment()
    env = dict(environment.env)
    for statement in args.sql:
        with _db(env) as conn:
            conn.execute(statement)
        print(f"ran: {statement}", flush=True)
    log = Path(env["DATA_DIR"]) / "bench.log"
    created = subprocess.run(
        [sys.executable, "-m", "cli", "apikey", "create", "--name", "bench", "--permission", "event:create",
         "--rate-limit", "0"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    key = created.stdout.strip().splitlines()[-1]
    headers = {"Content-Type": "application/json", "X-API-Key": key}
    web = Server("api.wsgi:app", env, config="python:api.gunicorn_conf", log=log)
    if args.stage_tasks:
        env["PIPELINE_STAGE_TASKS"] = "true"
    workers = Workers(env, args.concurrency, log)
    print(f"database {environment.db_name}, redis db {environment.redis_db}, web :{web.port}, "
          f"{args.concurrency} worker processes; logs {log}; {args.label} {uptime()}", flush=True)
    results: dict[str, Any] = {}
    try:
        time.sleep(5)
        run_load(web.port, "/api/v1/events", headers, factory("warm", 10), duration=3, processes=1, threads=2, rate=20)
        _wait_drained(env, "warm", 60)
        results["rss_before_mb"] = round(workers.rss_mb(), 1)
        print(f"worker RSS after warm-up: {results['rss_before_mb']} MB", flush=True)
        if "sustained" not in args.skip:
            results["sustained"] = sustained(env, web.port, headers, args.rate, args.batch, args.duration, "sus",
                                             args.events_per_incident)
            print(f"RESULT sustained: {json.dumps(results['sustained'], default=str)}", flush=True)
        if "latency" not in args.skip:
            results["latency"] = latency(env, web.port, headers, args.latency_rate, 10, args.latency_duration, "lat",
                                         args.events_per_incident)
            print(f"RESULT latency at {args.latency_rate:.0f} events/s: {json.dumps(results['latency'])}", flush=True)
        if args.memory_minutes:
            results["memory"] = memory(env, web.port, headers, workers, args.memory_rate, args.memory_minutes,
                                       args.events_per_incident)
            print(f"RESULT memory: {json.dumps(results['memory'])}", flush=True)
        results["rss_after_mb"] = round(workers.rss_mb(), 1)
        print(f"worker RSS after load: {results['rss_after_mb']} MB", flush=True)
        workers.stop()
        if args.compare_stage_tasks and "sustained" in results:
            staged = Workers({**env, "PIPELINE_STAGE_TASKS": "true"}, args.concurrency, log)
            try:
                time.sleep(5)
                results["stage_tasks"] = sustained(env, web.port, headers, args.rate, args.batch, args.duration, "stg",
                                                   args.events_per_incident)
                print(f"RESULT sustained, a task per stage: {json.dumps(results['stage_tasks'], default=str)}",
                      flush=True)
            finally:
                staged.stop()
            ratio = results["sustained"]["end_to_end_per_s"] / results["stage_tasks"]["end_to_end_per_s"]
            print(f"RESULT ratio end to end, one task per batch / a task per stage: {ratio:.2f}x", flush=True)
        if "baseline" not in args.skip:
            baseline_workers = Workers({**env, "PIPELINE_BATCH_SIZE": "1", "PIPELINE_STAGE_TASKS": "true"},
                                       args.concurrency, log)
            try:
                time.sleep(5)
                load = run_load(web.port, "/api/v1/events", headers, factory("base", 1),
                                duration=args.baseline_duration, processes=1, threads=2, rate=args.baseline_rate)
                _wait_drained(env, "base", 120)
                with _db(env) as conn:
                    # events processed per second from the first accept to the last incident written
                    done, span = conn.execute(
                        "SELECT count(processed_at), extract(epoch FROM coalesce(max(processed_at), now()) "
                        "- min(received_at)) FROM events WHERE event_id LIKE 'base-%'").fetchone()
                results["baseline"] = {"accepted_per_s": load.items_per_sec,
                                       "processed_per_s": done / float(span) if span else 0.0}
                print(f"RESULT baseline (a chain per event): {json.dumps(results['baseline'])}", flush=True)
            finally:
                baseline_workers.stop()
        if "sustained" in results and "baseline" in results and results["baseline"]["processed_per_s"]:
            ratio = results["sustained"]["end_to_end_per_s"] / results["baseline"]["processed_per_s"]
            print(f"RESULT ratio end to end / per-event baseline: {ratio:.1f}x", flush=True)
        print("SUMMARY " + json.dumps(results, default=str), flush=True)
    finally:
        workers.stop()
        web.stop()
        environment.close()


if __name__ == "__main__":
    main()
